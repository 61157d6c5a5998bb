"""Socket.IO echo through an event with an ack: a bare vs an instrumented python-socketio server, interleaved.

    python -m benchmarks.socketio_echo [--reps 5] [--calls 2000] [--stack aiohttp|asgi] [--traced-client]

Each rep starts a fresh server process per variant (``bare``, then ``wstrace``, the order reversed on odd reps)
and measures ``--calls`` sequential ``AsyncClient.call("echo", <64 bytes>)`` round trips (an event, its handler,
its ack) from a client in this process, over the WebSocket transport on 127.0.0.1. The instrumented server uses
the real SDK with a BatchSpanProcessor and a discarding exporter (``benchmarks.common.sdk``). The client is bare
unless ``--traced-client``: then both ends are instrumented, so the per-event carrier is in force. Prints each
rep's rates and the median of the paired ratios (rep i of wstrace over rep i of bare), the issue's measure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from typing import Any

from benchmarks.common import ROOT, free_port


PAYLOAD = "x" * 64


def serve(port: int, variant: str, stack: str) -> None:
    import socketio  # noqa: PLC0415

    if variant == "wstrace":
        from benchmarks.common import sdk  # noqa: PLC0415
        from wstrace.instrumentation.socketio import SocketioInstrumentor  # noqa: PLC0415

        tracer_provider, meter_provider, _spans = sdk()
        SocketioInstrumentor().instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
    sio = socketio.AsyncServer(async_mode="asgi" if stack == "asgi" else "aiohttp")

    @sio.event
    async def echo(sid: str, data: Any) -> Any:
        return data

    if stack == "asgi":
        import uvicorn  # noqa: PLC0415

        uvicorn.run(socketio.ASGIApp(sio), host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    else:
        from aiohttp import web  # noqa: PLC0415

        app = web.Application()
        sio.attach(app)
        web.run_app(app, host="127.0.0.1", port=port, print=None)


async def measure(url: str, calls: int, traced: bool) -> float:
    import socketio  # noqa: PLC0415

    client = socketio.AsyncClient(reconnection=False)
    for _ in range(100):
        try:
            await client.connect(url, transports=["websocket"])
            break
        except socketio.exceptions.ConnectionError:
            await asyncio.sleep(0.05)
    for _ in range(200):  # warm-up
        await client.call("echo", PAYLOAD)
    start = time.perf_counter()
    for _ in range(calls):
        assert await client.call("echo", PAYLOAD) == PAYLOAD
    elapsed = time.perf_counter() - start
    await client.disconnect()
    return calls / elapsed


def one(variant: str, args: argparse.Namespace) -> float:
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "benchmarks.socketio_echo",
            "--serve",
            str(port),
            "--variant",
            variant,
            "--stack",
            args.stack,
        ],
        cwd=ROOT,
    )
    try:
        return asyncio.run(measure(f"http://127.0.0.1:{port}", args.calls, args.traced_client))
    finally:
        server.terminate()
        server.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--stack", choices=("aiohttp", "asgi"), default="aiohttp")
    parser.add_argument("--traced-client", action="store_true")
    parser.add_argument("--serve", type=int)
    parser.add_argument("--variant", default="bare")
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.variant, args.stack)
        return
    if args.traced_client:
        from benchmarks.common import sdk  # noqa: PLC0415
        from wstrace.instrumentation.socketio import SocketioInstrumentor  # noqa: PLC0415

        tracer_provider, meter_provider, _spans = sdk()
        SocketioInstrumentor().instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
    rates: dict[str, list[float]] = {"bare": [], "wstrace": []}
    for rep in range(args.reps):
        order = ("bare", "wstrace") if rep % 2 == 0 else ("wstrace", "bare")
        for variant in order:
            rates[variant].append(one(variant, args))
    ratios = [t / b for t, b in zip(rates["wstrace"], rates["bare"], strict=True)]
    print(
        json.dumps(
            {
                "stack": args.stack,
                "traced_client": args.traced_client,
                "calls": args.calls,
                "bare_per_s": [round(r) for r in rates["bare"]],
                "wstrace_per_s": [round(r) for r in rates["wstrace"]],
                "ratio_median": round(statistics.median(ratios), 3),
                "ratio_min": round(min(ratios), 3),
                "ratio_max": round(max(ratios), 3),
            }
        )
    )


if __name__ == "__main__":
    main()
