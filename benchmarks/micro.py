"""In-process micro-benchmark: wstrace's per-message cost on top of the SDK's, with no sockets.

    python -m benchmarks.micro [--rounds 7] [--iterations 20000] [--only SUBSTRING] [--json OUT] [--clock wall|cpu]

Each case drives a server-side ``ConnectionTracer`` the way an adapter does (``received``, ``send_start``,
``send_end``, ``receive_done``), or the hand-written :mod:`benchmarks.minimal` instrumentation that makes
the same spans with the raw API, against the real SDK (BatchSpanProcessor, discarding exporter). Cases run
interleaved, ``--rounds`` times; the table gives the median µs per unit and, for each wstrace case, the
difference to its minimal twin measured in the same rounds: wstrace's own cost, warm. ``--clock cpu`` times
with the calling thread's CPU time instead of the wall clock: on a shared machine, time the thread spent
descheduled (or waiting for the GIL while the span processor's thread exports) is then left out.
"""

from __future__ import annotations

import argparse
import contextvars
import gc
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

from opentelemetry import context as otel_context, trace

from benchmarks.common import sdk
from benchmarks.minimal import MinimalConnection


Unit = Callable[[], None]
ROUTE = "/bench"
PAYLOAD = "e" * 64
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
ENVELOPED = f"\x1ewt1traceparent={TRACEPARENT}\x1e{PAYLOAD}"


def _tracer(sampled: bool = True) -> tuple[trace.Tracer, Any]:
    tracer_provider, meter_provider, _ = sdk(sampled=sampled)
    return tracer_provider.get_tracer("bench"), meter_provider


def _wstrace(
    *, model: str = "message", envelope: bool = False, sampled: bool = True, streams: bool = True, metrics: bool = True
) -> tuple[Any, Any]:
    from wstrace.config import Config  # noqa: PLC0415 - the minimal cases must not import wstrace
    from wstrace.connection import ConnectionTracer  # noqa: PLC0415
    from wstrace.metrics import Instruments  # noqa: PLC0415

    tracer, meter_provider = _tracer(sampled)
    config = Config.load(model=model, envelope="negotiate" if envelope else "off", streams=streams)
    headers = [("wstrace-envelope", "frame/1")] if envelope else []
    instruments = Instruments(meter_provider) if metrics else None
    ct = ConnectionTracer.server(tracer, config, path=ROUTE, headers=headers, instruments=instruments)
    ct.opened(response_headers=list(ct.response_headers().items()))
    return ct, ct


def wstrace_echo(**options: Any) -> Unit:
    """One round trip: an inbound message and its reply (a one-chunk reply stream)."""
    ct, _ = _wstrace(**options)
    wire_in = ENVELOPED if options.get("envelope") else PAYLOAD
    received, send_start, send_end, receive_done = ct.received, ct.send_start, ct.send_end, ct.receive_done

    def unit() -> None:
        payload = received(wire_in)
        _, handle = send_start(payload)
        send_end(handle)
        receive_done()

    return unit


def minimal_echo(*, model: str = "message", envelope: bool = False) -> Unit:
    tracer, _ = _tracer()
    conn = MinimalConnection(tracer, ROUTE, model=model, envelope=envelope)
    wire_in = ENVELOPED if envelope else PAYLOAD
    received, send_start, send_end, receive_done = conn.received, conn.send_start, conn.send_end, conn.receive_done

    def unit() -> None:
        payload = received(wire_in)
        _, span = send_start(payload)
        send_end(span, len(payload))
        receive_done()

    return unit


def wstrace_push(**options: Any) -> Unit:
    """One message pushed with no inbound message being handled: a send span each."""
    ct, _ = _wstrace(**options)
    send_start, send_end = ct.send_start, ct.send_end

    def unit() -> None:
        _, handle = send_start(PAYLOAD)
        send_end(handle)

    return unit


def minimal_push(*, envelope: bool = False) -> Unit:
    tracer, _ = _tracer()
    conn = MinimalConnection(tracer, ROUTE, envelope=envelope)

    def unit() -> None:
        _, span = conn.send_span(PAYLOAD)
        span.end()

    return unit


STREAM_LENGTH = 10_000
"""Chunks per stream (or run) in the chunk cases: each unit is one chunk, and one unit in 10,000 also ends
the stream and starts the next, so a chunk's figure includes its share of a 10,000-chunk stream's end."""


def _chunks(restart: Callable[[], None], send_start: Callable[[Any], Any]) -> Unit:
    """One chunk sent with ``send_start`` (as the adapter does; a chunk's handle needs no ``send_end``), and
    every ``STREAM_LENGTH`` chunks ``restart``: end the stream and begin the next."""
    state = [0]

    def unit() -> None:
        if state[0] % STREAM_LENGTH == 0:
            restart()
        state[0] += 1
        send_start(PAYLOAD)

    return unit


def chunk_harness() -> Unit:
    """The chunk cases' own bookkeeping, without wstrace: their twin."""
    state = [0]

    def unit() -> None:
        if state[0] % STREAM_LENGTH == 0:
            pass
        state[0] += 1

    return unit


def wstrace_chunk(**options: Any) -> Unit:
    """One chunk of a long reply stream: sent while the inbound message is handled (its context current)."""
    ct, _ = _wstrace(**options)
    wire_in = ENVELOPED if options.get("envelope") else PAYLOAD

    def restart() -> None:
        ct.receive_done()  # the stream's message is done: the stream ends
        ct.received(wire_in)  # the next request; its reply stream starts with the next chunk

    return _chunks(restart, ct.send_start)


def wstrace_push_chunk(**options: Any) -> Unit:
    """One chunk of a push run: sent with no context current (a worker's task), after a request was handled."""
    ct, _ = _wstrace(**options)
    wire_in = ENVELOPED if options.get("envelope") else PAYLOAD

    def restart() -> None:
        ct.received(wire_in)  # an inbound message ends the push run; the next push links to it
        ct.receive_done()

    return _chunks(restart, ct.send_start)


def wstrace_uplink_chunk(*, envelope: bool = False) -> Unit:
    """One chunk of a client's run: sent under an application span of its own (a new span every 10,000)."""
    from wstrace.config import Config  # noqa: PLC0415
    from wstrace.connection import ConnectionTracer  # noqa: PLC0415
    from wstrace.metrics import Instruments  # noqa: PLC0415

    tracer, meter_provider = _tracer()
    config = Config.load(envelope="negotiate" if envelope else "off")
    ct = ConnectionTracer.client(
        tracer,
        config,
        url=f"ws://127.0.0.1:9{ROUTE}",
        scheme="ws",
        host="127.0.0.1",
        port=9,
        path=ROUTE,
        instruments=Instruments(meter_provider),
    )
    ct.opened(response_headers=[("wstrace-envelope", "frame/1")] if envelope else [])
    held: list[Any] = []

    def restart() -> None:
        if held:
            span, token = held.pop()
            otel_context.detach(token)
            span.end()
        span = tracer.start_span("upload")
        held.append((span, otel_context.attach(trace.set_span_in_context(span))))

    return _chunks(restart, ct.send_start)


def nothing() -> Unit:
    def unit() -> None:
        pass

    return unit


def sdk_two_spans() -> Unit:
    """The floor: two spans started and ended with the attributes wstrace gives them, nothing else."""
    tracer, _ = _tracer()
    attributes: dict[str, Any] = {
        "network.protocol.name": "websocket",
        "websocket.session.id": "0" * 32,
        "websocket.message.type": "text",
        "websocket.message.ordinal": 1,
        "messaging.message.body.size": 64,
    }
    start_span = tracer.start_span

    def unit() -> None:
        start_span("receive /bench", attributes=attributes).end()
        start_span("send /bench", attributes=attributes).end()

    return unit


def sdk_histogram() -> Unit:
    """One histogram record with the two attributes wstrace's stream metrics carry."""
    _, meter_provider = _tracer()
    histogram = meter_provider.get_meter("bench").create_histogram(
        "h", unit="s", explicit_bucket_boundaries_advisory=(0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28)
    )
    attributes = {"http.route": ROUTE, "wstrace.stream.direction": "outbound"}
    record = histogram.record

    def unit() -> None:
        record(0.001, attributes)

    return unit


# name -> (factory, twin): the twin is the case whose cost is subtracted to get wstrace's own cost.
CASES: dict[str, tuple[Callable[[], Unit], Optional[str]]] = {
    "nothing (loop overhead)": (nothing, None),
    "sdk: 2 spans, 5 attributes each": (sdk_two_spans, None),
    "sdk: 1 histogram record, 2 attributes": (sdk_histogram, None),
    "minimal echo, message model, envelope off": (minimal_echo, None),
    "wstrace echo, message model, envelope off": (wstrace_echo, "minimal echo, message model, envelope off"),
    "wstrace echo, message model, envelope off, metrics off": (
        lambda: wstrace_echo(metrics=False),
        "minimal echo, message model, envelope off",
    ),
    "minimal echo, message model, envelope on": (lambda: minimal_echo(envelope=True), None),
    "wstrace echo, message model, envelope on": (
        lambda: wstrace_echo(envelope=True),
        "minimal echo, message model, envelope on",
    ),
    "minimal echo, connection model, envelope off": (lambda: minimal_echo(model="connection"), None),
    "wstrace echo, connection model, envelope off": (
        lambda: wstrace_echo(model="connection"),
        "minimal echo, connection model, envelope off",
    ),
    "wstrace echo, handshake sampled out": (lambda: wstrace_echo(sampled=False), "nothing (loop overhead)"),
    "wstrace echo, sampled out, envelope on": (
        lambda: wstrace_echo(sampled=False, envelope=True),
        "nothing (loop overhead)",
    ),
    "minimal push, span per message": (minimal_push, None),
    "wstrace push, span per message": (wstrace_push, "minimal push, span per message"),
    "chunk harness (the chunk cases' loop)": (chunk_harness, None),
    "wstrace stream chunk, envelope off": (wstrace_chunk, "chunk harness (the chunk cases' loop)"),
    "wstrace stream chunk, envelope on": (
        lambda: wstrace_chunk(envelope=True),
        "chunk harness (the chunk cases' loop)",
    ),
    "wstrace push run chunk (no context), envelope off": (wstrace_push_chunk, "chunk harness (the chunk cases' loop)"),
    "wstrace push run chunk (no context), envelope on": (
        lambda: wstrace_push_chunk(envelope=True),
        "chunk harness (the chunk cases' loop)",
    ),
    "wstrace client run chunk (application span), envelope off": (
        wstrace_uplink_chunk,
        "chunk harness (the chunk cases' loop)",
    ),
    "wstrace client run chunk (application span), envelope on": (
        lambda: wstrace_uplink_chunk(envelope=True),
        "chunk harness (the chunk cases' loop)",
    ),
}

# The per-chunk target: wstrace's own work for one chunk of a reply stream, warm, in µs.
TARGETS = (
    ("wstrace stream chunk, envelope off", 1.0),
    ("wstrace stream chunk, envelope on", 1.0),
)


CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}


def measure(unit: Unit, iterations: int, clock: Callable[[], float] = time.perf_counter) -> float:
    """One timing of ``iterations`` calls, in µs per call (GC disabled while timing)."""
    gc.collect()
    gc.disable()
    try:
        start = clock()
        for _ in range(iterations):
            unit()
        elapsed = clock() - start
    finally:
        gc.enable()
    return elapsed / iterations * 1e6


def run(names: list[str], rounds: int, iterations: int, clock: str = "wall") -> dict[str, list[float]]:
    # Each case runs in a context of its own, as each connection's task does: the context a case
    # attaches (a receive span) must not leak into the next case's sends.
    contexts = {name: contextvars.Context() for name in names}
    units = {name: contexts[name].run(CASES[name][0]) for name in names}
    for name, unit in units.items():  # warm-up: caches, the SDK's lazy set-up, the first streams
        contexts[name].run(measure, unit, min(2000, iterations))
    timings: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name, unit in units.items():
            timings[name].append(contexts[name].run(measure, unit, iterations, CLOCKS[clock]))
        print(f"round {r + 1}/{rounds} done", file=sys.stderr)
    return timings


def report(timings: dict[str, list[float]]) -> dict[str, Any]:
    rows = []
    for name, values in timings.items():
        twin = CASES[name][1]
        own = None
        if twin is not None and twin in timings:
            own = statistics.median(a - b for a, b in zip(values, timings[twin], strict=True))
        rows.append(
            {
                "case": name,
                "us_median": statistics.median(values),
                "us_min": min(values),
                "us_max": max(values),
                "twin": twin,
                "own_us_median": own,
            }
        )
    own_cost = {row["case"]: row["own_us_median"] for row in rows}
    targets = [
        {
            "target": f"{case}: wstrace's own µs per chunk (minus its twin)",
            "value": own_cost[case],
            "goal": goal,
            "met": own_cost[case] is not None and own_cost[case] <= goal,
        }
        for case, goal in TARGETS
        if case in own_cost
    ]
    return {"rows": rows, "targets": targets}


def table(result: dict[str, Any]) -> str:
    lines = [
        "| case | µs per unit, median (min-max) | minus its twin (paired median) | twin |",
        "|---|---:|---:|---|",
    ]
    for row in result["rows"]:
        own = f"{row['own_us_median']:+.2f}" if row["own_us_median"] is not None else ""
        lines.append(
            f"| {row['case']} | {row['us_median']:.2f} ({row['us_min']:.2f}-{row['us_max']:.2f}) | {own}"
            f" | {row['twin'] or ''} |"
        )
    if result.get("targets"):
        lines += ["", "| target | this run | goal | met |", "|---|---:|---:|---|"]
        for row in result["targets"]:
            met = "yes" if row["met"] else "**no**"
            lines.append(f"| {row['target']} | {row['value']:.2f} µs | ≤ {row['goal']} | {met} |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--iterations", type=int, default=20_000)
    parser.add_argument("--only", default="", help="cases whose name contains this (their twins are added)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument("--clock", choices=tuple(CLOCKS), default="wall", help="cpu: the thread's CPU time")
    args = parser.parse_args(argv)
    names = [name for name in CASES if args.only in name]
    for name in list(names):
        twin = CASES[name][1]
        if twin is not None and twin not in names:
            names.append(twin)
    names = [name for name in CASES if name in names]  # keep the declared order
    result = report(run(names, args.rounds, args.iterations, args.clock))
    result["clock"] = args.clock
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
