"""The measuring client: never instrumented, so only the server's cost is measured.

With ``--traced-peer`` it behaves like an instrumented peer at no cost of its own: it offers the
envelope in the handshake, sends messages with a ready-made envelope, and strips replies.

    python -m benchmarks.client URL --workload echo|stream [--count N] [--size B] [--traced-peer]

Prints one JSON object: the rate and, for echo, latency percentiles.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

from websockets.asyncio.client import connect

from wstrace import envelope


TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


async def echo(url: str, count: int, size: int, traced: bool) -> dict[str, float]:
    headers = {"wstrace-envelope": "frame/1"} if traced else {}
    payload = "e" * size
    wire = envelope.encode(payload, {"traceparent": TRACEPARENT}) if traced else payload
    async with connect(url, additional_headers=headers, compression=None, ping_interval=None) as ws:
        for _ in range(min(500, count)):  # warm-up
            await ws.send(wire)
            await ws.recv()
        latencies = []
        start = time.perf_counter()
        for _ in range(count):
            sent = time.perf_counter()
            await ws.send(wire)
            reply = await ws.recv()
            latencies.append(time.perf_counter() - sent)
        elapsed = time.perf_counter() - start
        if traced:
            assert envelope.decode(reply).payload == payload
        else:
            assert reply == payload
    latencies.sort()
    return {
        "rate": count / elapsed,
        "p50_us": latencies[len(latencies) // 2] * 1e6,
        "p99_us": latencies[int(len(latencies) * 0.99)] * 1e6,
        "mean_us": statistics.fmean(latencies) * 1e6,
    }


async def stream(url: str, count: int, traced: bool) -> dict[str, float]:
    headers = {"wstrace-envelope": "frame/1"} if traced else {}

    def request(n: int) -> str:
        text = f"stream:{n}"
        return str(envelope.encode(text, {"traceparent": TRACEPARENT})) if traced else text

    async with connect(url, additional_headers=headers, compression=None, ping_interval=None, max_queue=None) as ws:
        await ws.send(request(200))  # warm-up
        for _ in range(200):
            await ws.recv()
        start = time.perf_counter()
        await ws.send(request(count))
        for _ in range(count):
            last = await ws.recv()
        elapsed = time.perf_counter() - start
        if traced:
            last = envelope.decode(last).payload
        assert last == "y" * 64
    return {"rate": count / elapsed}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--workload", choices=("echo", "stream"), required=True)
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--traced-peer", action="store_true")
    args = parser.parse_args()
    if args.workload == "echo":
        result = asyncio.run(echo(args.url, args.count, args.size, args.traced_peer))
    else:
        result = asyncio.run(stream(args.url, args.count, args.traced_peer))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
