"""A websockets server for benchmarks: echoes, or answers ``stream:N`` with N chunks.

    python -m benchmarks.server --port P [--wstrace] [--model M] [--envelope E] [--chunk-spans] [--sampled-out]

Prints ``ready`` when listening; exits after --lifetime seconds or on SIGTERM, printing the span count.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from websockets.asyncio.server import ServerConnection, serve


CHUNK = b"x" * 64


async def handler(ws: ServerConnection) -> None:
    async for message in ws:
        if isinstance(message, str) and message.startswith("stream:"):
            chunk = "y" * 64
            for _ in range(int(message[7:])):
                await ws.send(chunk)
        else:
            await ws.send(message)


async def main(args: argparse.Namespace) -> None:
    stop = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set_result, None)
    async with serve(handler, "127.0.0.1", args.port, compression=None, ping_interval=None):
        print("ready", flush=True)
        await asyncio.wait_for(stop, args.lifetime)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--wstrace", action="store_true")
    parser.add_argument("--model", default="message")
    parser.add_argument("--envelope", default="negotiate")
    parser.add_argument("--chunk-spans", action="store_true")
    parser.add_argument("--streams", default="on")
    parser.add_argument("--sampled-out", action="store_true")
    parser.add_argument("--lifetime", type=float, default=120.0)
    args = parser.parse_args()
    spans = None
    if args.wstrace:
        from benchmarks.common import sdk
        from wstrace.instrumentation.websockets import WebsocketsInstrumentor

        tracer_provider, meter_provider, spans = sdk(sampled=not args.sampled_out)
        WebsocketsInstrumentor().instrument(
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
            model=args.model,
            envelope=args.envelope,
            chunk_spans=args.chunk_spans,
            streams=args.streams,
        )
    try:
        asyncio.run(main(args))
    except TimeoutError:
        pass
    if spans is not None:
        tracer_provider.force_flush()
        print(f"spans {spans.count}", flush=True)
