"""The measuring client: uninstrumented, so only the server's cost is measured, except in ``uplink``.

    python -m benchmarks.client URL --workload echo|stream|push|uplink|concurrent|idle|long [--count N]
        [--size B] [--connections C] [--traced-peer] [--fast-read] [--instrument off|sdk|wstrace]
        [--envelope off|negotiate] [--deadline S]

With ``--traced-peer`` it behaves like an instrumented peer at no cost of its own: it offers the envelope
in the handshake, sends messages in a ready-made envelope (sampled context), and strips the replies.

Workloads (every loop is bounded by its count and by ``--deadline`` seconds):

* ``echo``: ``--count`` sequential round trips of a ``--size``-byte text message, after a warm-up.
* ``stream``: asks for ``--count`` 64-byte chunks and reads them all (the handler's reply stream).
* ``push``: the same, but the server pushes the chunks from a task with no context (a worker's pushes).
* ``uplink``: the client sends ``--count`` 64-byte messages under one application span of its own
  (``upload``) and waits for the server's acknowledgement. The instrumented side is this client:
  ``--instrument wstrace`` installs wstrace's websockets instrumentation with the SDK of
  :mod:`benchmarks.common` (``--envelope``); ``off`` (the bare baseline) runs the same code with the
  OpenTelemetry API alone, whose span is a no-op; ``sdk`` has the SDK make the application's span, and no
  wstrace (what the SDK's presence costs by itself).
* ``concurrent``: ``--connections`` connections open at once, each makes ``--count`` round trips; the
  rate is round trips per second over the whole phase, opening included.
* ``idle``: opens ``--connections`` connections, one round trip each, then keeps them idle while the
  server is probed (``probe`` on stdout, then a line on stdin to go on); then as many again, and a
  second probe.
* ``long``: one connection carries ``--count`` messages (pipelined in windows); the server is probed
  after the first tenth and at the end.

``--fast-read`` reads stream and push chunks with a bare ``recv()`` under one deadline for the whole
stream (the default wraps every ``recv()`` in ``asyncio.wait_for``, which costs a task per message).
``--rounds R`` measures ``stream``, ``push`` and ``uplink`` R times over one connection (one stream, push
run or upload each) and reports the median round's rate, and every round's. With rounds, it also reports the
CPU time the instrumented side spent per message over all rounds (``cpu_us``): for ``uplink`` its own, for
``stream`` and ``push`` the server's, which ``--server-cpu`` asks the runner for (``cpu start`` and ``cpu end``
on stdout, each answered by a line on stdin). Unlike the rate, it does not depend on which side is the
bottleneck, nor on time a process spends descheduled.

Prints one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from typing import Any, Callable, Optional

from websockets.asyncio.client import ClientConnection, connect

from benchmarks.common import (
    CHUNK,
    ENVELOPE_OFFER,
    PUSH_PREFIX,
    STREAM_PREFIX,
    UPLOAD_PREFIX,
    raise_fd_limit,
    unwrap,
    wrap,
)


class Peer:
    def __init__(self, url: str, traced: bool) -> None:
        self.url = url
        self.traced = traced

    def connect(self, **options: Any) -> Any:
        headers = dict([ENVELOPE_OFFER]) if self.traced else {}
        return connect(
            self.url,
            additional_headers=headers,
            compression=None,
            ping_interval=None,
            max_size=None,
            open_timeout=60,
            close_timeout=5,
            **options,
        )

    def wire(self, payload: str) -> str:
        return wrap(payload) if self.traced else payload


async def probe(label: str, what: str = "probe") -> None:
    """Ask the runner to probe the server now (``probe``: its memory; ``cpu``: its CPU time); wait until it has."""
    print(f"{what} {label}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


async def echo(peer: Peer, count: int, size: int, deadline: float, server_cpu: bool = False) -> dict[str, Any]:
    payload = "e" * size
    wire = peer.wire(payload)
    async with peer.connect() as ws:
        for _ in range(min(500, count)):  # warm-up
            await ws.send(wire)
            await ws.recv()
        if server_cpu:
            await probe("start", "cpu")
        latencies = []
        start = time.perf_counter()
        stop_at = start + deadline
        for i in range(count):
            sent = time.perf_counter()
            await ws.send(wire)
            reply = await ws.recv()
            latencies.append(time.perf_counter() - sent)
            if i & 255 == 0 and sent > stop_at:
                break
        elapsed = time.perf_counter() - start
        if server_cpu:
            await probe("end", "cpu")
        if unwrap(reply) != payload:
            raise SystemExit(f"bad echo: {str(reply)[:80]!r}")
    latencies.sort()
    return {
        "rate": len(latencies) / elapsed,
        "done": len(latencies),
        "warmup": min(500, count),
        "p50_us": latencies[len(latencies) // 2] * 1e6,
        "p99_us": latencies[int(len(latencies) * 0.99)] * 1e6,
        "mean_us": statistics.fmean(latencies) * 1e6,
    }


async def read_chunks(ws: ClientConnection, count: int, deadline: float, fast: bool) -> tuple[Any, int]:
    """Read ``count`` messages; returns the last one and how many arrived."""
    last: Any = None
    received = 0
    if fast:
        recv = ws.recv
        async with asyncio.timeout(deadline):
            while received < count:
                last = await recv()
                received += 1
        return last, received
    while received < count:
        last = await asyncio.wait_for(ws.recv(), deadline)
        received += 1
    return last, received


def by_rounds(rates: list[float], done: int, warmup: int, cpu_s: Optional[float] = None) -> dict[str, Any]:
    """The result of a workload measured in rounds: the median round's rate (a round disturbed by the rest of
    the machine does not move it), and every round's; with ``cpu_s``, the CPU time of all rounds, per message."""
    result = {"rate": statistics.median(rates), "rounds": rates, "done": done, "warmup": warmup}
    if cpu_s is not None:
        result["cpu_us"] = cpu_s / done * 1e6
    return result


async def stream(
    peer: Peer,
    count: int,
    deadline: float,
    prefix: str = STREAM_PREFIX,
    fast: bool = False,
    rounds: int = 1,
    server_cpu: bool = False,
) -> dict[str, Any]:
    """Ask for ``count`` chunks (``stream:N``: the handler's reply; ``push:N``: a context-less task's) and read
    them, ``rounds`` times: each round is one stream (or one push run) of ``count`` messages."""
    async with peer.connect(max_queue=None) as ws:
        warmup = min(1000, count)
        await ws.send(peer.wire(f"{prefix}{warmup}"))
        await read_chunks(ws, warmup, deadline, fast)
        if server_cpu:
            await probe("start", "cpu")
        rates = []
        done = 0
        for _ in range(rounds):
            start = time.perf_counter()
            await ws.send(peer.wire(f"{prefix}{count}"))
            last, received = await read_chunks(ws, count, deadline, fast)
            rates.append(received / (time.perf_counter() - start))
            done += received
            if unwrap(last) != CHUNK:
                raise SystemExit(f"bad chunk: {str(last)[:80]!r}")
        if server_cpu:
            await probe("end", "cpu")
    return by_rounds(rates, done, warmup)


async def uplink(peer: Peer, count: int, deadline: float, tracer: Any, rounds: int = 1) -> dict[str, Any]:
    """Send ``count`` messages under one application span (``upload``), then wait for the server's ``ack``;
    ``rounds`` times, each under a span of its own (one run each)."""
    payload = "u" * 64

    async def upload(ws: ClientConnection, n: int) -> None:
        send = ws.send
        with tracer.start_as_current_span("upload"):
            await send(f"{UPLOAD_PREFIX}{n}")
            for _ in range(n):
                await send(payload)
            ack = await ws.recv()
        if unwrap(ack) != "ack":
            raise SystemExit(f"bad acknowledgement: {str(ack)[:80]!r}")

    async with peer.connect() as ws:
        warmup = min(1000, count)
        await asyncio.wait_for(upload(ws, warmup), deadline)
        rates = []
        cpu = time.process_time()  # this process's, all threads: the instrumented side's CPU
        for _ in range(rounds):
            start = time.perf_counter()
            await asyncio.wait_for(upload(ws, count), deadline)
            rates.append(count / (time.perf_counter() - start))
        cpu = time.process_time() - cpu
    return by_rounds(rates, count * rounds, warmup, cpu)


async def concurrent(peer: Peer, connections: int, count: int, deadline: float) -> dict[str, Any]:
    payload = "c" * 64
    wire = peer.wire(payload)
    all_done = asyncio.Event()
    finished = 0
    opened: list[float] = []

    async def one() -> None:
        nonlocal finished
        async with peer.connect() as ws:
            opened.append(time.perf_counter())
            for _ in range(count):
                await ws.send(wire)
                if unwrap(await ws.recv()) != payload:
                    raise SystemExit("bad echo")
            finished += 1
            if finished == connections:
                all_done.set()
            await all_done.wait()  # every connection stays open until all have exchanged their messages

    start = time.perf_counter()
    tasks = [asyncio.create_task(one()) for _ in range(connections)]
    await asyncio.wait_for(all_done.wait(), deadline)
    elapsed = time.perf_counter() - start
    await asyncio.gather(*tasks)
    return {
        "rate": connections * count / elapsed,
        "done": connections * count,
        "seconds": elapsed,
        "all_open_s": max(opened) - start,
    }


async def idle(peer: Peer, connections: int, deadline: float) -> dict[str, Any]:
    payload = "i" * 64
    await probe("before")
    sockets: list[ClientConnection] = []
    start = time.perf_counter()

    async def one() -> None:
        ws = await peer.connect()
        sockets.append(ws)
        await ws.send(peer.wire(payload))
        await ws.recv()

    await asyncio.wait_for(asyncio.gather(*(one() for _ in range(connections))), deadline)
    elapsed = time.perf_counter() - start
    await asyncio.sleep(0.5)  # let the server settle (handshakes logged, tasks parked)
    await probe("open")
    # A second batch: what it adds is what each further connection costs. The first batch also pays
    # one-off costs (first-use allocations, the span processor's batch in flight when the probe flushes it).
    await asyncio.wait_for(asyncio.gather(*(one() for _ in range(connections))), deadline)
    await asyncio.sleep(0.5)
    await probe("more")
    await asyncio.gather(*(ws.close() for ws in sockets))
    return {"rate": connections / elapsed, "done": connections, "seconds": elapsed}


async def long(peer: Peer, count: int, deadline: float) -> dict[str, Any]:
    payload = "l" * 64
    wire = peer.wire(payload)
    window = 100
    first = max(window, count // 10 // window * window)
    async with peer.connect(max_queue=None) as ws:
        start = start_rest = time.perf_counter()
        stop_at = start + deadline
        sent = 0
        while sent < count and time.perf_counter() < stop_at:
            for _ in range(window):
                await ws.send(wire)
            for _ in range(window):
                await ws.recv()
            sent += window
            if sent == first:
                await probe("first")
                start_rest = time.perf_counter()
        elapsed = time.perf_counter() - start_rest
        await probe("last")
    return {"rate": (sent - first) / elapsed, "done": sent, "first": first}


def instrument(envelope: str, wstrace: bool = True) -> tuple[Any, Callable[[], int]]:
    """wstrace's websockets instrumentation on this client (unless not ``wstrace``), with the benchmark SDK;
    returns a tracer for the application's own spans and what counts the spans exported."""
    from benchmarks.common import sdk  # noqa: PLC0415 - the bare client loads no SDK
    from wstrace.instrumentation.websockets import WebsocketsInstrumentor  # noqa: PLC0415

    tracer_provider, meter_provider, spans = sdk()
    if wstrace:
        WebsocketsInstrumentor().instrument(
            tracer_provider=tracer_provider, meter_provider=meter_provider, envelope=envelope
        )

    def count() -> int:
        tracer_provider.force_flush()
        return spans.count

    return tracer_provider.get_tracer("bench.client"), count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url")
    workloads = ("echo", "stream", "push", "uplink", "concurrent", "idle", "long")
    parser.add_argument("--workload", choices=workloads, required=True)
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--traced-peer", action="store_true")
    parser.add_argument("--fast-read", action="store_true", help="stream, push: no wait_for per message")
    parser.add_argument("--rounds", type=int, default=1, help="stream, push, uplink: measured rounds of --count")
    parser.add_argument("--server-cpu", action="store_true", help="echo, stream, push: ask for the server's CPU time")
    parser.add_argument(
        "--instrument", choices=("off", "sdk", "wstrace"), default="off", help="uplink: instrument the client"
    )
    parser.add_argument("--envelope", choices=("off", "negotiate"), default="negotiate", help="with --instrument")
    parser.add_argument("--deadline", type=float, default=60.0, help="seconds a workload may take at most")
    args = parser.parse_args()
    raise_fd_limit()
    if args.instrument != "off" and args.workload != "uplink":
        parser.error("--instrument is for the uplink workload only: elsewhere the client must cost nothing")
    count_spans: Optional[Callable[[], int]] = None
    tracer: Any = None
    if args.instrument != "off":
        tracer, count_spans = instrument(args.envelope, wstrace=args.instrument == "wstrace")
    elif args.workload == "uplink":
        from opentelemetry import trace  # noqa: PLC0415 - the API alone: the application's span is a no-op

        tracer = trace.get_tracer("bench.client")
    peer = Peer(args.url, args.traced_peer)
    if args.workload == "echo":
        work = echo(peer, args.count, args.size, args.deadline, args.server_cpu)
    elif args.workload in ("stream", "push"):
        prefix = STREAM_PREFIX if args.workload == "stream" else PUSH_PREFIX
        work = stream(peer, args.count, args.deadline, prefix, args.fast_read, args.rounds, args.server_cpu)
    elif args.workload == "uplink":
        work = uplink(peer, args.count, args.deadline, tracer, args.rounds)
    elif args.workload == "concurrent":
        work = concurrent(peer, args.connections, args.count, args.deadline)
    elif args.workload == "idle":
        work = idle(peer, args.connections, args.deadline)
    else:
        work = long(peer, args.count, args.deadline)
    result = asyncio.run(work)
    if count_spans is not None:
        result["spans"] = count_spans()  # the instrumented client's spans (uplink)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
