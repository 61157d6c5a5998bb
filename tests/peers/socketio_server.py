"""A python-socketio server process behind an ``AsyncRedisManager``, for the Socket.IO cross-process tests.

    python socketio_server.py REDIS_PORT|- [bare]

Serves a ``socketio.AsyncServer`` (aiohttp) on a free loopback port, instrumented by wstrace unless ``bare``
is given; ``-`` for no Redis (one process). Lines for the test start with ``PEER `` and hold one JSON object
(``listening`` with the port first); spans are printed by the SDK's console exporter, one JSON object each,
on the same stream. Handlers: ``join`` puts the client in the room ``lobby``; ``shout`` emits ``news`` to
``lobby`` (reaching the clients of every server on the same Redis); ``echo`` acks with its arguments. Exits
when stdin closes.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import socketio
from aiohttp import web
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor


def emit(**fields: Any) -> None:
    print("PEER " + json.dumps(fields), flush=True)


async def main(redis_port: int | None, bare: bool) -> None:
    if not bare:
        from wstrace.instrumentation.socketio import SocketioInstrumentor  # noqa: PLC0415

        provider = TracerProvider()
        provider.add_span_processor(
            SimpleSpanProcessor(ConsoleSpanExporter(formatter=lambda span: span.to_json(indent=None) + "\n"))
        )
        SocketioInstrumentor().instrument(tracer_provider=provider)
    manager = socketio.AsyncRedisManager(f"redis://127.0.0.1:{redis_port}/0") if redis_port else None
    sio = socketio.AsyncServer(async_mode="aiohttp", client_manager=manager)

    @sio.event
    async def echo(sid: str, *args: Any) -> Any:
        emit(event="echo", args=list(args))
        return tuple(args)

    @sio.event
    async def join(sid: str) -> str:
        await sio.enter_room(sid, "lobby")
        emit(event="joined", sid=sid)
        return "joined"

    @sio.event
    async def shout(sid: str, text: Any) -> str:
        await sio.emit("news", text, room="lobby")
        return "shouted"

    app = web.Application()
    sio.attach(app)
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    emit(event="listening", port=runner.addresses[0][1])
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # until the test closes stdin
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if sys.argv[1] != "-" else None, len(sys.argv) > 2 and sys.argv[2] == "bare"))
