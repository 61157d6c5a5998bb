"""The measuring client: never instrumented, so only the server's cost is measured.

    python -m benchmarks.client URL --workload echo|stream|concurrent|idle|long [--count N] [--size B]
        [--connections C] [--traced-peer] [--deadline S]

With ``--traced-peer`` it behaves like an instrumented peer at no cost of its own: it offers the envelope
in the handshake, sends messages in a ready-made envelope (sampled context), and strips the replies.

Workloads (every loop is bounded by its count and by ``--deadline`` seconds):

* ``echo``: ``--count`` sequential round trips of a ``--size``-byte text message, after a warm-up.
* ``stream``: asks for ``--count`` 64-byte chunks and reads them all (a server push stream).
* ``concurrent``: ``--connections`` connections open at once, each makes ``--count`` round trips; the
  rate is round trips per second over the whole phase, opening included.
* ``idle``: opens ``--connections`` connections, one round trip each, then keeps them idle while the
  server is probed (``probe`` on stdout, then a line on stdin to go on); then as many again, and a
  second probe.
* ``long``: one connection carries ``--count`` messages (pipelined in windows); the server is probed
  after the first tenth and at the end.

Prints one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from benchmarks.common import CHUNK, STREAM_PREFIX, TRACEPARENT, raise_fd_limit


HEADER = f"traceparent={TRACEPARENT}"


def wrap(payload: str) -> str:
    """A text envelope as a traced peer would send it (the wire format of docs/protocol.md)."""
    return f"\x1ewt1{HEADER}\x1e{payload}"


def unwrap(wire: str | bytes) -> str | bytes:
    if isinstance(wire, str) and wire.startswith("\x1ewt1"):
        return wire[wire.index("\x1e", 4) + 1 :]
    return wire


class Peer:
    def __init__(self, url: str, traced: bool) -> None:
        self.url = url
        self.traced = traced

    def connect(self, **options: Any) -> Any:
        headers = {"wstrace-envelope": "frame/1"} if self.traced else {}
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


async def probe(label: str) -> None:
    """Ask the runner to probe the server now; wait until it has."""
    print(f"probe {label}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


async def echo(peer: Peer, count: int, size: int, deadline: float) -> dict[str, Any]:
    payload = "e" * size
    wire = peer.wire(payload)
    async with peer.connect() as ws:
        for _ in range(min(500, count)):  # warm-up
            await ws.send(wire)
            await ws.recv()
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


async def stream(peer: Peer, count: int, deadline: float) -> dict[str, Any]:
    async with peer.connect(max_queue=None) as ws:
        await ws.send(peer.wire(f"{STREAM_PREFIX}{min(1000, count)}"))  # warm-up
        for _ in range(min(1000, count)):
            await ws.recv()
        start = time.perf_counter()
        await ws.send(peer.wire(f"{STREAM_PREFIX}{count}"))
        last: Any = None
        received = 0
        while received < count:
            last = await asyncio.wait_for(ws.recv(), deadline)
            received += 1
        elapsed = time.perf_counter() - start
        if unwrap(last) != CHUNK:
            raise SystemExit(f"bad chunk: {str(last)[:80]!r}")
    return {"rate": received / elapsed, "done": received, "warmup": min(1000, count)}


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url")
    parser.add_argument("--workload", choices=("echo", "stream", "concurrent", "idle", "long"), required=True)
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--traced-peer", action="store_true")
    parser.add_argument("--deadline", type=float, default=60.0, help="seconds a workload may take at most")
    args = parser.parse_args()
    raise_fd_limit()
    peer = Peer(args.url, args.traced_peer)
    if args.workload == "echo":
        work = echo(peer, args.count, args.size, args.deadline)
    elif args.workload == "stream":
        work = stream(peer, args.count, args.deadline)
    elif args.workload == "concurrent":
        work = concurrent(peer, args.connections, args.count, args.deadline)
    elif args.workload == "idle":
        work = idle(peer, args.connections, args.deadline)
    else:
        work = long(peer, args.count, args.deadline)
    print(json.dumps(asyncio.run(work)), flush=True)


if __name__ == "__main__":
    main()
