"""A python-socketio server process behind an ``AsyncRedisManager``, for the Socket.IO cross-process tests.

    python socketio_server.py REDIS_PORT|- [bare|traced] [threaded]

Serves a ``socketio.AsyncServer`` (aiohttp) on a free loopback port, instrumented by wstrace unless ``bare``
is given; ``-`` for no Redis (one process). ``threaded``: a threaded ``socketio.Server`` behind a
``RedisManager`` instead, as a WSGI app under werkzeug, with the handlers of
``tests/instrumentation/socketio_app.py``. Lines for the test start with ``PEER `` and hold one JSON object
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


def instrument() -> None:
    from wstrace.instrumentation.socketio import SocketioInstrumentor  # noqa: PLC0415

    provider = TracerProvider()
    provider.add_span_processor(
        SimpleSpanProcessor(ConsoleSpanExporter(formatter=lambda span: span.to_json(indent=None) + "\n"))
    )
    SocketioInstrumentor().instrument(tracer_provider=provider)


def threaded(redis_port: int | None) -> None:
    from tests.instrumentation.socketio_app import make_threaded_server, wsgi_server  # noqa: PLC0415

    manager = socketio.RedisManager(f"redis://127.0.0.1:{redis_port}/0") if redis_port else None
    with wsgi_server(socketio.WSGIApp(make_threaded_server([], client_manager=manager))) as url:
        emit(event="listening", port=int(url.rsplit(":", 1)[1]))
        sys.stdin.read()  # until the test closes stdin


async def main(redis_port: int | None) -> None:
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
    port = int(sys.argv[1]) if sys.argv[1] != "-" else None
    if "bare" not in sys.argv[2:]:
        instrument()
    if "threaded" in sys.argv[2:]:
        threaded(port)
    else:
        asyncio.run(main(port))
