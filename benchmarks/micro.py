"""In-process micro-benchmark: wstrace's per-message cost on top of the SDK's, with no sockets.

    python -m benchmarks.micro [--rounds 7] [--iterations 20000] [--only SUBSTRING] [--json OUT]

Each case drives a server-side ``ConnectionTracer`` the way an adapter does (``received``, ``send_start``,
``send_end``, ``receive_done``), or the hand-written :mod:`benchmarks.minimal` instrumentation that makes
the same spans with the raw API, against the real SDK (BatchSpanProcessor, discarding exporter). Cases run
interleaved, ``--rounds`` times; the table gives the median µs per unit and, for each wstrace case, the
difference to its minimal twin measured in the same rounds: wstrace's own cost, warm.
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

from opentelemetry import trace

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


def wstrace_chunk(**options: Any) -> Unit:
    """One chunk of a long reply stream (a new stream every 10,000 chunks)."""
    ct, _ = _wstrace(**options)
    wire_in = ENVELOPED if options.get("envelope") else PAYLOAD
    send_start = ct.send_start
    state = [0]

    def unit() -> None:
        if state[0] % 10_000 == 0:
            ct.receive_done()
            ct.received(wire_in)
        state[0] += 1
        send_start(PAYLOAD)

    return unit


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
    "wstrace stream chunk, envelope off": (wstrace_chunk, "nothing (loop overhead)"),
    "wstrace stream chunk, envelope on": (lambda: wstrace_chunk(envelope=True), "nothing (loop overhead)"),
}


def measure(unit: Unit, iterations: int) -> float:
    """One timing of ``iterations`` calls, in µs per call (GC disabled while timing)."""
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        for _ in range(iterations):
            unit()
        elapsed = time.perf_counter() - start
    finally:
        gc.enable()
    return elapsed / iterations * 1e6


def run(names: list[str], rounds: int, iterations: int) -> dict[str, list[float]]:
    # Each case runs in a context of its own, as each connection's task does: the context a case
    # attaches (a receive span) must not leak into the next case's sends.
    contexts = {name: contextvars.Context() for name in names}
    units = {name: contexts[name].run(CASES[name][0]) for name in names}
    for name, unit in units.items():  # warm-up: caches, the SDK's lazy set-up, the first streams
        contexts[name].run(measure, unit, min(2000, iterations))
    timings: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name, unit in units.items():
            timings[name].append(contexts[name].run(measure, unit, iterations))
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
    return {"rows": rows}


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
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--iterations", type=int, default=20_000)
    parser.add_argument("--only", default="", help="cases whose name contains this (their twins are added)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    names = [name for name in CASES if args.only in name]
    for name in list(names):
        twin = CASES[name][1]
        if twin is not None and twin not in names:
            names.append(twin)
    names = [name for name in CASES if name in names]  # keep the declared order
    result = report(run(names, args.rounds, args.iterations))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
