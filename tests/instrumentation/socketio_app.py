"""Socket.IO servers on loopback for the Socket.IO tests: a ``socketio.AsyncServer`` mounted as an aiohttp app or an
ASGI app (under uvicorn), a threaded ``socketio.Server`` as a WSGI app (under werkzeug's threaded server), and the
event handlers every test server has; clients, threaded or asyncio, behind one synchronous interface
(:class:`Driver`); and the span helpers the Socket.IO test modules share.

Handlers: ``echo`` answers with its arguments (an ack) and emits ``echoed`` with them; ``ask`` calls the client
(``call``) and returns what it answered; ``shout`` broadcasts ``news`` to the room ``lobby`` with an ack-less emit;
``join`` puts the client in ``lobby``; ``records`` holds what each handler saw (arguments, current span id).
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, Optional

import socketio
from aiohttp import web
from opentelemetry import context as otel_context, trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind

from tests.conftest import Telemetry
from tests.instrumentation.uvicorn_server import serve
from tests.missing import skip_or_fail
from tests.processes import OutputProcess


def span_id_now() -> int:
    return trace.get_current_span().get_span_context().span_id


def run(coro: Awaitable[Any]) -> Any:
    """Run ``coro`` on a new event loop, then let disconnect handlers run."""

    async def main() -> Any:
        result = await coro
        await asyncio.sleep(0.1)
        return result

    return asyncio.run(main())


def sid(span: ReadableSpan) -> int:
    return span.context.span_id


def parent(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def tid(span: ReadableSpan) -> int:
    return span.context.trace_id


def kind(telemetry: Telemetry, name: str, k: SpanKind) -> list[ReadableSpan]:
    return [s for s in telemetry.named(name) if s.kind == k]


def instrumenting(telemetry: Telemetry) -> Iterator[Callable[..., None]]:
    """The body of the Socket.IO test modules' ``instrument`` fixture: ``do(**options)`` instruments (with the
    test's tracer provider), and the end of the test uninstruments."""
    from wstrace.instrumentation.socketio import SocketioInstrumentor  # noqa: PLC0415

    instrumentor = SocketioInstrumentor()

    def do(**options: Any) -> None:
        options.setdefault("tracer_provider", telemetry.provider)
        instrumentor.instrument(**options)

    yield do
    instrumentor.uninstrument()


def check_echo_trace(telemetry: Telemetry, records: list[dict[str, Any]]) -> None:
    """After two ``echo`` emits under the span ``job``: each is a PRODUCER span, child of ``job``, whose handler
    span is its CONSUMER child (the handler ran in it, the session id the same), the handler's reply a child of
    the handler and the client's handler of the reply, and the ack a child of the emit; all in one trace."""
    echoes = [r for r in records if r["event"] == "echo"]
    job = telemetry.one("job")
    client_sends = kind(telemetry, "send echo /", SpanKind.PRODUCER)
    handlers = telemetry.named("process echo /")
    assert len(client_sends) == len(handlers) == 2
    for send in client_sends:
        assert parent(send) == sid(job)
        assert send.attributes["messaging.system"] == "socket.io"
        assert send.attributes["messaging.socket.io.event_name"] == "echo"
        assert send.attributes["messaging.socket.io.namespace"] == "/"
        assert send.attributes["messaging.operation.type"] == "send"
        handler = next(h for h in handlers if parent(h) == sid(send))
        assert handler.kind == SpanKind.CONSUMER
        assert handler.attributes["messaging.operation.type"] == "process"
        assert handler.attributes["websocket.session.id"] == send.attributes["websocket.session.id"]
        assert sid(handler) in {r["span_id"] for r in echoes}  # the handler ran in it
        answer = next(s for s in telemetry.named("send echoed /") if parent(s) == sid(handler))
        assert answer.attributes["wstrace.socketio.recipients"] == 1
        client_handler = telemetry.named("process echoed /")
        assert any(parent(h) == sid(answer) for h in client_handler)
        ack = next(s for s in telemetry.named("ack echo /") if parent(s) == sid(send))
        assert ack.kind == SpanKind.CONSUMER
    assert {tid(s) for s in telemetry.spans if "echo" in s.name or s.name == "job"} == {tid(job)}


def check_server_call(
    telemetry: Telemetry, records: list[dict[str, Any]], received: list[tuple[str, list[Any]]]
) -> None:
    """After ``ask`` (the server calls the client's ``question``): the client's handler and the server's ack span
    are children of the server's emit, which is a child of the ``ask`` handler; the handler resumed in its span."""
    assert received == [("question", ["why?"])]
    ask = telemetry.one("process ask /")
    question = telemetry.one("send question /")
    assert parent(question) == sid(ask)
    assert parent(telemetry.one("process question /")) == sid(question)
    assert parent(telemetry.one("ack question /")) == sid(question)
    assert [r["span_id"] for r in records if r["event"] == "ask"] == [sid(ask)]
    assert len({tid(s) for s in telemetry.spans if s.name.endswith((" ask /", " question /"))}) == 1


def check_broadcast(telemetry: Telemetry, received: list[list[tuple[str, list[Any]]]]) -> None:
    """After ``shout`` to three clients in ``lobby``: one PRODUCER span (the room, three recipients) whose
    children are the three clients' handlers."""
    assert all(r == [("news", ["hello"])] for r in received)
    news = telemetry.one("send news /")
    assert news.kind == SpanKind.PRODUCER
    assert news.attributes["messaging.destination.name"] == "lobby"
    assert news.attributes["messaging.socket.io.rooms"] == ("lobby",)
    assert news.attributes["wstrace.socketio.recipients"] == 3
    handlers = telemetry.named("process news /")
    assert len(handlers) == 3
    assert all(parent(h) == sid(news) for h in handlers)


def check_bare_client(bare: dict[str, Any], traced: dict[str, Any]) -> None:
    """What the bare python-socketio client (:func:`python_client`) got from a bare server (``bare``) and from the
    same server instrumented (``traced``): the same, with no carrier anywhere."""
    assert traced == bare
    assert ["echoed", [{"a": 1}, "two", [3]]] in bare["received"]
    assert ["news", ["hello"]] in bare["received"]
    assert bare["acks"][-1] == {"answer": "why?"}
    assert "__wstrace__" not in json.dumps(traced)


def check_stood_down(telemetry: Telemetry) -> None:
    """With a WebSocket-level adapter on too: one server and one client handshake span (the Socket.IO ones), no
    message span and no envelope."""
    assert len([s for s in telemetry.spans if s.kind == SpanKind.SERVER]) == 1
    assert len([s for s in telemetry.spans if s.kind == SpanKind.CLIENT]) == 1
    assert not [s for s in telemetry.spans if "websocket.message.type" in (s.attributes or {})]
    assert all(s.attributes.get("websocket.envelope") in (None, "none") for s in telemetry.spans)


def check_server_addresses(telemetry: Telemetry) -> None:
    """The server's handshake span names the socket the client connected to (the loopback address and the port
    the client's span has) and the client's end of it (an ephemeral port), not an engine.io driver's
    placeholders (``aiohttp``/``asgi``, port 0)."""
    (client_hs,) = [s for s in telemetry.spans if s.kind == SpanKind.CLIENT and s.name.startswith("GET")]
    (server_hs,) = [s for s in telemetry.spans if s.kind == SpanKind.SERVER]
    attributes = server_hs.attributes or {}
    assert attributes["server.address"] == "127.0.0.1"
    assert attributes["server.port"] == (client_hs.attributes or {})["server.port"]
    assert attributes["client.address"] == "127.0.0.1"
    client_port = attributes["client.port"]
    assert isinstance(client_port, int) and 0 < client_port < 65536 and client_port != attributes["server.port"]


BAD_CARRIERS: list[Any] = [
    {"__wstrace__": "not an object"},
    {"__wstrace__": {"traceparent": "00-" + "f" * 5000}},  # oversized
    {"__wstrace__": {"traceparent": 1}},  # not a string
    {"__wstrace__": {}, "other": 1},  # foreign: a key besides ours
    {"__wstrace__": {str(i): "x" for i in range(20)}},  # too many fields
    {"__wstrace": {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}},  # not our key
    {"__wstrace__": {"traceparent": "00-zz-zz-01"}},  # well formed, but no context: removed (the last one)
]
"""Last arguments the bad-carrier tests send (with the library's own ``emit``, under the span ``sender``)."""


def check_bad_carriers(telemetry: Telemetry, records: list[dict[str, Any]]) -> None:
    """After ``echo("payload", bad)`` for each of :data:`BAD_CARRIERS`: the malformed, oversized and foreign ones
    delivered unchanged, the unreadable one removed, and every handler in a fresh trace linked to the handshake."""
    echoes = sorted((r["args"] for r in records if r["event"] == "echo"), key=json.dumps)
    expected = [["payload", bad] for bad in BAD_CARRIERS[:-1]] + [["payload"]]
    assert echoes == sorted(expected, key=json.dumps)
    sender = telemetry.one("sender")
    handlers = telemetry.named("process echo /")
    assert len(handlers) == len(BAD_CARRIERS)
    for handler in handlers:
        assert handler.parent is None and tid(handler) != tid(sender)
        assert [link.attributes["wstrace.link.kind"] for link in handler.links] == ["handshake"]


HOSTILE_QUERY = "?traceparent=%ff%fe00-zz&wstrace-socketio=2&wstrace-socketio&wstrace-session=%00&x=" + "y" * 4000
"""A query for a connection URL: garbage context, a bad offer, a huge value."""
HOSTILE_HEADERS = {"traceparent": "00-" + "a" * 9000, "tracestate": ",=;" * 300, "wstrace-socketio": "yes"}
"""Headers for a client's ``connect``: garbage context, a bad offer."""


def check_hostile_handshake(telemetry: Telemetry, records: list[dict[str, Any]]) -> None:
    """After a connection made with :data:`HOSTILE_QUERY` and :data:`HOSTILE_HEADERS` and ``echo("ok")``: it
    worked, and the server's handshake span continues the client's (whose own ``traceparent`` header wins over
    the application's, merged last)."""
    server_hs = [s for s in telemetry.spans if s.kind == SpanKind.SERVER]
    assert len(server_hs) == 1
    client_hs = [s for s in telemetry.spans if s.kind == SpanKind.CLIENT]
    assert parent(server_hs[0]) == sid(client_hs[0])
    assert [r["args"] for r in records if r["event"] == "echo"] == [["ok"]]


def hex_ids(span: ReadableSpan) -> tuple[str, str]:
    """A span's trace and span ids as the console exporter prints them."""
    return f"0x{span.context.trace_id:032x}", f"0x{span.context.span_id:016x}"


def check_redis_hops(
    received: list[tuple[str, list[Any]]],
    handlers: list[ReadableSpan],
    roots: dict[str, tuple[str, str]],
    b_spans: list[dict[str, Any]],
) -> None:
    """Each ``news`` event the client on server B ``received`` (its handler spans ``handlers``) came from the emit
    ``roots[text]`` (trace and span id) on the other side of Redis: B's delivery (``send news /`` in ``b_spans``)
    continues that emit, with one recipient, and the client's handler continues B's delivery."""
    b_sends = [s for s in b_spans if s["name"] == "send news /"]
    assert len(b_sends) == len(roots) == len(handlers)
    for (_event, args), handler in zip(received, sorted(handlers, key=lambda s: s.start_time or 0), strict=True):
        trace_hex, span_hex = roots[args[0]]
        b_send = next(s for s in b_sends if s["parent_id"] == span_hex)  # B's delivery continues A's emit
        assert b_send["context"]["trace_id"] == trace_hex
        assert b_send["kind"] == "SpanKind.PRODUCER"
        assert b_send["attributes"]["messaging.destination.name"] == "lobby"
        assert b_send["attributes"]["wstrace.socketio.recipients"] == 1
        assert hex_ids(handler)[0] == trace_hex
        assert f"0x{parent(handler):016x}" == b_send["context"]["span_id"]  # the client's handler continues B's


def reply(args: tuple[Any, ...]) -> Any:
    """What a test handler returns and emits back for ``args``: one argument as itself, several as a tuple."""
    return tuple(args) if len(args) != 1 else args[0]


def make_server(records: list[dict[str, Any]], **options: Any) -> socketio.AsyncServer:
    """An AsyncServer with the test handlers; ``records`` gets one entry per handler call."""
    sio = socketio.AsyncServer(async_mode=options.pop("async_mode", "aiohttp"), **options)

    @sio.event
    async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        records.append({"event": "connect", "sid": sid})

    @sio.event
    async def echo(sid: str, *args: Any) -> Any:
        records.append({"event": "echo", "args": list(args), "span_id": span_id_now()})
        await sio.emit("echoed", reply(args), to=sid)
        return reply(args)

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


def make_threaded_server(records: list[dict[str, Any]], **options: Any) -> socketio.Server:
    """A threaded ``socketio.Server`` (``async_mode="threading"``) with the test handlers of :func:`make_server`."""
    sio = socketio.Server(async_mode="threading", **options)

    def connected(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        records.append({"event": "connect", "sid": sid})

    def echo(sid: str, *args: Any) -> Any:
        records.append({"event": "echo", "args": list(args), "span_id": span_id_now()})
        sio.emit("echoed", reply(args), to=sid)
        return reply(args)

    def ask(sid: str, question: Any) -> Any:
        answer = sio.call("question", question, to=sid, timeout=5)
        records.append({"event": "ask", "answer": answer, "span_id": span_id_now()})
        return answer

    def join(sid: str) -> str:
        sio.enter_room(sid, "lobby")
        return "joined"

    def shout(sid: str, text: Any) -> str:
        records.append({"event": "shout", "span_id": span_id_now()})
        sio.emit("news", text, room="lobby")
        return "shouted"

    for name, handler in (("connect", connected), ("echo", echo), ("ask", ask), ("join", join), ("shout", shout)):
        sio.on(name, handler)
    return sio


def make_flask_app(records: list[dict[str, Any]]) -> Any:
    """A Flask app with Flask-SocketIO (threading mode) whose ``echo`` handler acks with its arguments and emits
    ``echoed`` with them, as :func:`make_server`'s does."""
    try:
        from flask import Flask  # noqa: PLC0415
        from flask_socketio import SocketIO, emit  # noqa: PLC0415
    except ImportError as exc:
        skip_or_fail(f"{exc.name} is not installed (the test extra has it: pip install -e '.[test]')")

    app = Flask(__name__)
    sio = SocketIO(app, async_mode="threading")

    def echo(*args: Any) -> Any:
        records.append({"event": "echo", "args": list(args), "span_id": span_id_now()})
        emit("echoed", reply(args))
        return reply(args)

    sio.on_event("echo", echo)
    return app


@contextmanager
def wsgi_server(app: Any) -> Iterator[str]:
    """A WSGI app under werkzeug's threaded development server (it hands engine.io the socket, for the WebSocket
    transport through simple-websocket) in a thread of its own; yields ``http://127.0.0.1:<port>``."""
    try:
        from werkzeug.serving import WSGIRequestHandler, make_server  # noqa: PLC0415
    except ImportError:
        skip_or_fail("werkzeug is not installed (the test extra has it: pip install -e '.[test]')")

    class Quiet(WSGIRequestHandler):
        def log(self, type: str, message: str, *args: Any) -> None:
            pass

    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()  # returns once serve_forever has
        server.server_close()


def wait_for(check: Callable[[], Any], timeout: float = 5.0) -> Any:
    """Poll ``check`` until it returns something true (what the other threads record comes a moment later)."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


async def until_received(received: list[Any], count: int, timeout: float = 5.0) -> None:
    """Wait, on the event loop, until ``received`` holds ``count`` events (or ``timeout`` passes: the test's own
    assertions then say what is missing)."""
    deadline = time.monotonic() + timeout
    while len(received) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


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


@asynccontextmanager
async def aiohttp_two_sites(sio: socketio.AsyncServer) -> AsyncIterator[tuple[str, str]]:
    """``sio`` attached to one aiohttp app served on two free loopback ports (one server, two URLs, which
    ``excluded_urls`` can tell apart); yields both ``http://127.0.0.1:<port>``."""
    app = web.Application()
    sio.attach(app)
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    for _ in range(2):
        await web.TCPSite(runner, "127.0.0.1", 0).start()
    first, second = (f"http://127.0.0.1:{address[1]}" for address in runner.addresses)
    try:
        yield first, second
    finally:
        await runner.cleanup()


@contextmanager
def asgi_server(app: Any) -> Iterator[str]:
    """An ASGI app under uvicorn in a thread of its own; yields ``http://127.0.0.1:<port>``."""
    with serve(app, scheme="http", lifespan="off") as url:
        yield url


def _handlers(client: Any, received: list[tuple[str, list[Any]]], answer: Optional[Any], asynchronous: bool) -> None:
    def any_event(event: str, *args: Any) -> None:
        received.append((event, list(args)))

    def question(*args: Any) -> Any:
        received.append(("question", list(args)))
        return answer if answer is not None else (args[0] if args else None)

    if asynchronous:  # the asyncio client takes plain functions too; coroutine ones are its usual form

        async def any_event_async(event: str, *args: Any) -> None:
            any_event(event, *args)

        async def question_async(*args: Any) -> Any:
            return question(*args)

        client.on("*", any_event_async)
        client.on("question", question_async)
    else:
        client.on("*", any_event)
        client.on("question", question)


def make_client(received: list[tuple[str, list[Any]]], answer: Optional[Any] = None) -> socketio.AsyncClient:
    """An AsyncClient recording every event it receives (name, arguments); it answers ``question`` with
    ``answer`` (or the question)."""
    client = socketio.AsyncClient(reconnection=False)
    _handlers(client, received, answer, True)
    return client


async def call_once(url: str, data: Any) -> Any:
    """Connect a :func:`make_client` over WebSocket, ``call("echo", data)``, disconnect; the answer."""
    client = make_client([])
    await client.connect(url, transports=["websocket"])
    try:
        return await client.call("echo", data)
    finally:
        await client.disconnect()


class Driver:
    """A threaded ``socketio.Client`` or a ``socketio.AsyncClient`` driven from synchronous test code, recording
    what it receives as :func:`make_client`'s does. The asyncio client runs on an event loop in a thread of its
    own; each call carries the caller's OpenTelemetry context there."""

    def __init__(self, asynchronous: bool, received: list[tuple[str, list[Any]]], answer: Optional[Any] = None):
        self.asynchronous = asynchronous
        self.client: Any = (
            socketio.AsyncClient(reconnection=False) if asynchronous else socketio.Client(reconnection=False)
        )
        _handlers(self.client, received, answer, asynchronous)
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        if asynchronous:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._run, args=(self._loop,), daemon=True)
            self._thread.start()

    @staticmethod
    def _run(loop: asyncio.AbstractEventLoop) -> None:
        loop.run_forever()
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()

    def _do(self, method: str, *args: Any, **kwargs: Any) -> Any:
        call = getattr(self.client, method)
        if self._loop is None:
            return call(*args, **kwargs)
        ctx = otel_context.get_current()

        async def in_callers_context() -> Any:
            token = otel_context.attach(ctx)
            try:
                return await call(*args, **kwargs)
            finally:
                otel_context.detach(token)

        return asyncio.run_coroutine_threadsafe(in_callers_context(), self._loop).result(20)

    def connect(self, url: str, **kwargs: Any) -> None:
        self._do("connect", url, **kwargs)

    def emit(self, event: str, data: Any = None, callback: Any = None) -> None:
        self._do("emit", event, data, callback=callback)

    def call(self, event: str, data: Any = None) -> Any:
        return self._do("call", event, data, timeout=10)

    def disconnect(self) -> None:
        self._do("disconnect")
        if self._loop is not None:
            asyncio.run_coroutine_threadsafe(asyncio.sleep(0.2), self._loop).result(5)  # the disconnect handlers run
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            # engine.io's asyncio client never reads its polling POSTs' responses (AsyncClient._write_loop); one
            # still arriving when the session closed is collected later with aiohttp's "Unclosed" warning, at a
            # moment that depends on timing. Collect them now, quietly.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ResourceWarning)
                gc.collect()


PEERS = Path(__file__).resolve().parent.parent / "peers"
ROOT = PEERS.parents[1]


def peer_env() -> dict[str, str]:

    env = {k: v for k, v in os.environ.items() if not k.startswith(("WSTRACE_", "OTEL_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT)])
    return env


def python_client(url: str, *extra: str) -> dict[str, Any]:
    """Run ``tests/peers/socketio_client.py`` (a bare python-socketio client) against ``url``; what it printed."""
    result = subprocess.run(
        [sys.executable, str(PEERS / "socketio_client.py"), url, *extra],
        capture_output=True,
        text=True,
        timeout=60,
        env=peer_env(),
        check=False,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("PEER ")]
    assert result.returncode == 0 and lines, result.stdout + result.stderr
    return json.loads(lines[-1][5:])  # type: ignore[no-any-return]


class ServerProcess(OutputProcess):
    """``tests/peers/socketio_server.py`` in a process of its own; reads its output on a thread."""

    def __init__(
        self, redis_port: Optional[int], bare: bool = False, zero_code: bool = False, threaded: bool = False
    ) -> None:
        """``zero_code``: bare, run under ``opentelemetry-instrument`` (console exporter); ``threaded``: a threaded
        server (WSGI) behind a ``RedisManager``."""
        args = [sys.executable, str(PEERS / "socketio_server.py"), str(redis_port) if redis_port else "-"]
        env = peer_env()
        args.append("bare" if bare or zero_code else "traced")
        if threaded:
            args.append("threaded")
        if zero_code:
            args.insert(0, str(Path(sys.executable).parent / "opentelemetry-instrument"))
            env.update(
                OTEL_TRACES_EXPORTER="console",
                OTEL_METRICS_EXPORTER="none",
                OTEL_LOGS_EXPORTER="none",
                OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="asyncio,threading,aiohttp-client,aiohttp-server,redis",
            )
        super().__init__(args, env, stdin=True)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

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
