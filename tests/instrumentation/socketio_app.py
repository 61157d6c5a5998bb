"""Socket.IO servers on loopback for the Socket.IO tests: one ``socketio.AsyncServer`` mounted as an aiohttp app or
an ASGI app (under uvicorn), and the event handlers every test server has.

Handlers: ``echo`` answers with its arguments (an ack) and emits ``echoed`` with them; ``ask`` calls the client
(``call``) and returns what it answered; ``shout`` broadcasts ``news`` to the room ``lobby`` with an ack-less emit;
``join`` puts the client in ``lobby``; ``records`` holds what each handler saw (arguments, current span id).
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, Optional

import socketio
from aiohttp import web
from opentelemetry import trace

from tests.instrumentation.uvicorn_server import serve
from tests.processes import OutputProcess


def span_id_now() -> int:
    return trace.get_current_span().get_span_context().span_id


def make_server(records: list[dict[str, Any]], **options: Any) -> socketio.AsyncServer:
    """An AsyncServer with the test handlers; ``records`` gets one entry per handler call."""
    sio = socketio.AsyncServer(async_mode=options.pop("async_mode", "aiohttp"), **options)

    @sio.event
    async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        records.append({"event": "connect", "sid": sid})

    @sio.event
    async def echo(sid: str, *args: Any) -> Any:
        records.append({"event": "echo", "args": list(args), "span_id": span_id_now()})
        await sio.emit("echoed", tuple(args) if len(args) != 1 else args[0], to=sid)
        return tuple(args) if len(args) != 1 else args[0]

    @sio.event
    async def ask(sid: str, question: Any) -> Any:
        answer = await sio.call("question", question, to=sid, timeout=5)
        records.append({"event": "ask", "answer": answer, "span_id": span_id_now()})
        return answer

    @sio.event
    async def join(sid: str) -> str:
        await sio.enter_room(sid, "lobby")
        return "joined"

    @sio.event
    async def shout(sid: str, text: Any) -> str:
        records.append({"event": "shout", "span_id": span_id_now()})
        await sio.emit("news", text, room="lobby")
        return "shouted"

    return sio


@asynccontextmanager
async def aiohttp_server(sio: socketio.AsyncServer) -> AsyncIterator[str]:
    """``sio`` attached to an aiohttp app on a free loopback port; yields ``http://127.0.0.1:<port>``."""
    app = web.Application()
    sio.attach(app)
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@contextmanager
def asgi_server(app: Any) -> Iterator[str]:
    """An ASGI app under uvicorn in a thread of its own; yields ``http://127.0.0.1:<port>``."""
    with serve(app, scheme="http", lifespan="off") as url:
        yield url


def make_client(received: list[tuple[str, list[Any]]], answer: Optional[Any] = None) -> socketio.AsyncClient:
    """An AsyncClient recording every event it receives (name, arguments); it answers ``question`` with
    ``answer`` (or the question)."""
    client = socketio.AsyncClient(reconnection=False)

    @client.on("*")
    async def any_event(event: str, *args: Any) -> None:
        received.append((event, list(args)))

    @client.on("question")
    async def question(*args: Any) -> Any:
        received.append(("question", list(args)))
        return answer if answer is not None else (args[0] if args else None)

    return client


PEERS = Path(__file__).resolve().parent.parent / "peers"
ROOT = PEERS.parents[1]


def peer_env() -> dict[str, str]:

    env = {k: v for k, v in os.environ.items() if not k.startswith(("WSTRACE_", "OTEL_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT)])
    return env


class ServerProcess(OutputProcess):
    """``tests/peers/socketio_server.py`` in a process of its own; reads its output on a thread."""

    def __init__(self, redis_port: Optional[int], bare: bool = False, zero_code: bool = False) -> None:
        """``zero_code``: bare, run under ``opentelemetry-instrument`` (console exporter)."""
        args = [sys.executable, str(PEERS / "socketio_server.py"), str(redis_port) if redis_port else "-"]
        env = peer_env()
        if bare or zero_code:
            args.append("bare")
        if zero_code:
            args.insert(0, str(Path(sys.executable).parent / "opentelemetry-instrument"))
            env.update(
                OTEL_TRACES_EXPORTER="console",
                OTEL_METRICS_EXPORTER="none",
                OTEL_LOGS_EXPORTER="none",
                OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="asyncio,threading,aiohttp-client,aiohttp-server,redis",
            )
        super().__init__(args, env, stdin=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.wait_for('listening')['port']}"

    def spans(self) -> list[dict[str, Any]]:
        return self.printed_spans()

    def stop(self) -> str:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.close()
            self.proc.wait(10)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(5)
        self._closed()
        return "\n".join(self.lines)


async def close_manager(manager: Any) -> None:
    """Stop an AsyncRedisManager's listening task and close its connections (the library has no close)."""
    task = getattr(manager, "thread", None)
    if task is not None:
        task.cancel()
        try:
            await task
        except BaseException:  # cancelled, or whatever it died of
            pass
    for name in ("pubsub", "redis"):
        conn = getattr(manager, name, None)
        if conn is not None:
            await conn.aclose()
