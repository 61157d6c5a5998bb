"""The python-socketio adapter, stage 2: the threaded ``socketio.Server`` (a WSGI app under werkzeug's threaded
server, engine.io's threading mode with simple-websocket) and ``socketio.Client``, long-polling, the threaded
``RedisManager`` across processes, and Flask-SocketIO.

Real servers on loopback, real clients (threaded and asyncio, see ``Driver``), a real redis-server and a second
server process.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import pytest
import socketio
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind

from tests.conftest import Telemetry
from tests.instrumentation import socketio_app as shared
from tests.instrumentation.socketio_app import (
    Driver,
    ServerProcess,
    asgi_server,
    kind,
    make_server,
    make_threaded_server,
    parent,
    python_client,
    sid,
    wait_for,
    wsgi_server,
)


CLIENTS = pytest.mark.parametrize("asynchronous", [False, True], ids=["threaded-client", "asyncio-client"])


@pytest.fixture
def instrument(telemetry: Telemetry) -> Iterator[Callable[..., None]]:
    yield from shared.instrumenting(telemetry)


def closed(telemetry: Telemetry, count: int) -> list[ReadableSpan]:
    """The ``close`` spans, once ``count`` of them ended (each end records its own in a thread of its own)."""

    def found() -> list[ReadableSpan]:
        return [s for s in telemetry.spans if s.name.startswith("close")]

    return wait_for(lambda: len(found()) >= count and found()) or []


# The threaded server, with either client ---------------------------------------------------------------------


@CLIENTS
def test_event_spans_and_ack(telemetry: Telemetry, instrument: Callable[..., None], asynchronous: bool) -> None:
    """Against the threaded server (WSGI): client emit → server handler → server emit → client handler, one trace;
    the ack runs in the emit's trace; the handlers see their arguments without the carrier; the connection's
    handshake spans carry one session id and the server's continues the client's."""
    instrument()
    tracer = telemetry.provider.get_tracer("test")
    records: list[dict[str, Any]] = []
    received: list[tuple[str, list[Any]]] = []
    acked: list[Any] = []
    with wsgi_server(socketio.WSGIApp(make_threaded_server(records))) as url:
        client = Driver(asynchronous, received)
        with tracer.start_as_current_span("connecting"):
            client.connect(url, transports=["websocket"])
        with tracer.start_as_current_span("job"):
            client.emit("echo", ({"a": 1}, "two"), callback=lambda *args: acked.append(args))
            answer = client.call("echo", [1, 2])
        wait_for(lambda: len(received) >= 2 and acked)
        client.disconnect()
        closed(telemetry, 2)
    assert answer == [1, 2]
    assert acked == [({"a": 1}, "two")]
    echoes = [r for r in records if r["event"] == "echo"]
    assert [r["args"] for r in echoes] == [[{"a": 1}, "two"], [[1, 2]]]
    assert sorted(received, key=str) == sorted([("echoed", [{"a": 1}, "two"]), ("echoed", [[1, 2]])], key=str)

    (client_hs,) = [s for s in telemetry.spans if s.kind == SpanKind.CLIENT]
    assert parent(client_hs) == sid(telemetry.one("connecting"))
    (server_hs,) = [s for s in telemetry.spans if s.kind == SpanKind.SERVER]
    assert parent(server_hs) == sid(client_hs)
    assert server_hs.attributes["wstrace.context.source"] == "headers"
    session = client_hs.attributes["websocket.session.id"]
    assert server_hs.attributes["websocket.session.id"] == session

    shared.check_echo_trace(telemetry, records)
    assert {s.attributes["websocket.session.id"] for s in kind(telemetry, "send echo /", SpanKind.PRODUCER)} == {
        session
    }
    assert sorted(s.attributes["websocket.close.code"] for s in closed(telemetry, 2)) == [1000, 1000]
    shared.check_server_addresses(telemetry)  # WSGI's own SERVER_NAME, SERVER_PORT, REMOTE_ADDR and REMOTE_PORT


@CLIENTS
def test_server_call_and_client_answer(
    telemetry: Telemetry, instrument: Callable[..., None], asynchronous: bool
) -> None:
    """The threaded server's ``call``: the client's handler and the server's ack span are children of the server's
    emit, and the handler that called resumes in its own span."""
    instrument()
    records: list[dict[str, Any]] = []
    received: list[tuple[str, list[Any]]] = []
    with wsgi_server(socketio.WSGIApp(make_threaded_server(records))) as url:
        client = Driver(asynchronous, received, answer="because")
        client.connect(url, transports=["websocket"])
        answer = client.call("ask", "why?")
        client.disconnect()
    assert answer == "because"
    shared.check_server_call(telemetry, records, received)


def test_broadcast_is_one_emit_span(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """The threaded server's emit to a room of three clients (two threaded, one asyncio) is one PRODUCER span with
    three recipients, and each client's handler is its child."""
    instrument()
    received: list[list[tuple[str, list[Any]]]] = [[], [], []]
    with wsgi_server(socketio.WSGIApp(make_threaded_server([]))) as url:
        clients = [Driver(asynchronous, r) for asynchronous, r in zip((False, False, True), received, strict=True)]
        for client in clients:
            client.connect(url, transports=["websocket"])
            assert client.call("join") == "joined"
        assert clients[0].call("shout", "hello") == "shouted"
        wait_for(lambda: all(received))
        for client in clients:
            client.disconnect()
    shared.check_broadcast(telemetry, received)


@CLIENTS
def test_excluded_connection_is_left_alone(
    telemetry: Telemetry, instrument: Callable[..., None], asynchronous: bool
) -> None:
    """``excluded_urls`` matching engine.io's path, against the threaded server over long-polling: no span on
    either end, no wstrace header on the request, and every event and ack as without wstrace."""
    instrument(excluded_urls=r"/socket\.io/")
    records: list[dict[str, Any]] = []
    received: list[tuple[str, list[Any]]] = []
    sio = make_threaded_server(records)
    with wsgi_server(socketio.WSGIApp(sio)) as url:
        client = Driver(asynchronous, received)
        client.connect(url)
        (environ,) = sio.environ.values()
        headers = {k[5:].replace("_", "-").lower() for k in environ if k.startswith("HTTP_")}
        assert client.call("echo", "x") == "x"
        assert client.call("ask", "why?") == "why?"
        wait_for(lambda: ("echoed", ["x"]) in received)
        client.disconnect()
        wait_for(lambda: len(sio.environ) == 0)
    assert not headers & {"traceparent", "wstrace-session", "wstrace-socketio"}
    assert sorted(received, key=str) == [("echoed", ["x"]), ("question", ["why?"])]
    assert [r.get("args", r.get("answer")) for r in records if r["event"] != "connect"] == [["x"], "why?"]
    assert telemetry.spans == [] and not telemetry.open_spans.names()


def _serve_and_run(client: Callable[[str], dict[str, Any]]) -> dict[str, Any]:
    with wsgi_server(socketio.WSGIApp(make_threaded_server([]))) as url:
        return client(url)


def test_bare_python_client_sees_the_same(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """A bare python-socketio client (another process) gets exactly the same events, arguments and acks from an
    instrumented threaded server as from a bare one."""
    bare = _serve_and_run(python_client)
    instrument()
    shared.check_bare_client(bare, _serve_and_run(python_client))
    assert telemetry.named("process echo /")  # the server was traced


def test_websocket_client_adapter_stands_down(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """With the websocket-client adapter on too (envelope negotiated), the threaded client's engine.io WebSocket
    gets no websocket-client spans, headers or envelope: one client handshake span, the Socket.IO one."""
    from wstrace.instrumentation.websocket_client import WebsocketClientInstrumentor  # noqa: PLC0415

    instrument()
    ws_instrumentor = WebsocketClientInstrumentor()
    ws_instrumentor.instrument(tracer_provider=telemetry.provider, envelope="negotiate")
    received: list[tuple[str, list[Any]]] = []
    try:
        with wsgi_server(socketio.WSGIApp(make_threaded_server([]))) as url:
            client = Driver(False, received)
            client.connect(url, transports=["websocket"])
            assert client.call("echo", "hi") == "hi"
            wait_for(lambda: received)
            client.disconnect()
            closed(telemetry, 2)
    finally:
        ws_instrumentor.uninstrument()
    assert received == [("echoed", ["hi"])]
    shared.check_stood_down(telemetry)
    assert parent(telemetry.one("process echo /")) == sid(telemetry.one("send echo /"))


def test_bad_carriers_are_delivered_unchanged(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """Between the threaded client and server: a malformed, oversized or foreign carrier is delivered unchanged, an
    unreadable one removed, each handler in a fresh trace linked to the handshake (as for the asyncio classes)."""
    instrument()
    records: list[dict[str, Any]] = []
    bare_emit = socketio.Client.emit.__wrapped__  # the library's own emit: sends exactly these arguments
    tracer = telemetry.provider.get_tracer("test")
    with wsgi_server(socketio.WSGIApp(make_threaded_server(records))) as url:
        client = Driver(False, [])
        client.connect(url, transports=["websocket"])
        with tracer.start_as_current_span("sender"):
            for bad in shared.BAD_CARRIERS:
                bare_emit(client.client, "echo", ("payload", bad))
        wait_for(lambda: len(telemetry.named("process echo /")) == len(shared.BAD_CARRIERS))
        client.disconnect()
    shared.check_bad_carriers(telemetry, records)


@pytest.mark.parametrize("transports", [["websocket"], None], ids=["websocket", "polling-then-websocket"])
def test_hostile_handshake_never_raises(
    telemetry: Telemetry, instrument: Callable[..., None], transports: list[str] | None
) -> None:
    """The threaded client and server with a hostile query and headers (garbage traceparent, huge values, a bad
    offer), over WebSocket and over polling then the upgrade: the connection works and the handshake is traced."""
    instrument()
    records: list[dict[str, Any]] = []
    with wsgi_server(socketio.WSGIApp(make_threaded_server(records))) as url:
        client = Driver(False, [])
        client.client.connect(url + shared.HOSTILE_QUERY, headers=shared.HOSTILE_HEADERS, transports=transports)
        assert client.call("echo", "ok") == "ok"
        client.disconnect()
    shared.check_hostile_handshake(telemetry, records)


# Long-polling --------------------------------------------------------------------------------------------------


def _serving(threaded: bool, records: list[dict[str, Any]]) -> AbstractContextManager[str]:
    if threaded:
        return wsgi_server(socketio.WSGIApp(make_threaded_server(records)))
    # Short ping times: the asyncio server holds a pending poll until a ping is due, and the asyncio
    # client's disconnect waits for it (bare as well as traced: about 30 s with the defaults).
    return asgi_server(socketio.ASGIApp(make_server(records, async_mode="asgi", ping_interval=1, ping_timeout=3)))


@CLIENTS
@pytest.mark.parametrize("threaded", [True, False], ids=["threaded-server", "asyncio-server"])
def test_long_polling(
    telemetry: Telemetry, instrument: Callable[..., None], asynchronous: bool, threaded: bool
) -> None:
    """Over the polling transport only (threaded server under WSGI, asyncio server under ASGI): the server's
    handshake span takes its context from the first polling request's headers, the offer is answered, and the
    per-event carrier works both ways (with acks)."""
    instrument()
    tracer = telemetry.provider.get_tracer("test")
    records: list[dict[str, Any]] = []
    received: list[tuple[str, list[Any]]] = []
    with _serving(threaded, records) as url:
        client = Driver(asynchronous, received, answer="polled")
        client.connect(url, transports=["polling"])
        with tracer.start_as_current_span("job"):
            assert client.call("echo", {"over": "polling"}) == {"over": "polling"}
            assert client.call("ask", "why?") == "polled"
        wait_for(lambda: len(received) >= 2)
        client.disconnect()
    assert [r["args"] for r in records if r["event"] == "echo"] == [[{"over": "polling"}]]
    assert received == [("echoed", [{"over": "polling"}]), ("question", ["why?"])]  # no carrier left in them
    client_hs = next(s for s in telemetry.spans if s.kind == SpanKind.CLIENT)
    server_hs = next(s for s in telemetry.spans if s.kind == SpanKind.SERVER)
    assert parent(server_hs) == sid(client_hs)
    assert server_hs.attributes["wstrace.context.source"] == "headers"
    assert server_hs.attributes["http.response.status_code"] == client_hs.attributes["http.response.status_code"] == 200
    send = telemetry.one("send echo /")
    handler = telemetry.one("process echo /")
    assert parent(send) == sid(telemetry.one("job"))
    assert parent(handler) == sid(send)
    assert parent(telemetry.one("send echoed /")) == sid(handler)
    assert parent(telemetry.one("process echoed /")) == sid(telemetry.one("send echoed /"))
    assert parent(telemetry.one("process question /")) == sid(telemetry.one("send question /"))
    assert parent(telemetry.one("ack echo /")) == sid(send)


# Flask-SocketIO -------------------------------------------------------------------------------------------------


@CLIENTS
def test_flask_socketio(telemetry: Telemetry, instrument: Callable[..., None], asynchronous: bool) -> None:
    """A Flask-SocketIO app (threading mode, served by werkzeug) needs nothing of its own: its handlers run in the
    CONSUMER spans that continue the client's emits, its ``emit`` is a PRODUCER span whose client handler
    continues it, and the acks are in the emits' traces."""
    instrument()
    tracer = telemetry.provider.get_tracer("test")
    records: list[dict[str, Any]] = []
    received: list[tuple[str, list[Any]]] = []
    acked: list[Any] = []
    with wsgi_server(shared.make_flask_app(records)) as url:
        client = Driver(asynchronous, received)
        client.connect(url, transports=["websocket"])
        with tracer.start_as_current_span("job"):
            client.emit("echo", ({"a": 1}, "two"), callback=lambda *args: acked.append(args))
            assert client.call("echo", [1, 2]) == [1, 2]
        wait_for(lambda: len(received) >= 2 and acked)
        client.disconnect()
    assert acked == [({"a": 1}, "two")]
    assert [r["args"] for r in records] == [[{"a": 1}, "two"], [[1, 2]]]
    (client_hs,) = [s for s in telemetry.spans if s.kind == SpanKind.CLIENT]
    (server_hs,) = [s for s in telemetry.spans if s.kind == SpanKind.SERVER]
    assert parent(server_hs) == sid(client_hs)
    shared.check_echo_trace(telemetry, records)


# Across processes, through Redis ------------------------------------------------------------------------------


def test_redis_manager_across_processes(telemetry: Telemetry, instrument: Callable[..., None], redis_port: int) -> None:
    """Two threaded server processes behind ``RedisManager``: server A's handler emits ``news`` to ``lobby``, and
    server B delivers it to its client in the same trace (A's handler → A's emit → B's delivery → the client's
    handler). A ``RedisManager(write_only=True)`` in this process emits in a span of its own (no recipient count)
    that B's delivery continues as well."""
    import redis  # noqa: PLC0415

    instrument()
    tracer = telemetry.provider.get_tracer("test")
    received: list[tuple[str, list[Any]]] = []
    with ServerProcess(redis_port, threaded=True) as server_a, ServerProcess(redis_port, threaded=True) as server_b:
        listener = Driver(False, received)
        listener.connect(server_b.url, transports=["websocket"])
        assert listener.call("join") == "joined"
        shouter = Driver(False, [])
        shouter.connect(server_a.url, transports=["websocket"])
        # Both managers subscribed (each starts listening at its first connection).
        counter = redis.Redis(port=redis_port)
        assert wait_for(lambda: counter.pubsub_numsub("socketio")[0][1] >= 2, timeout=10)
        counter.close()
        assert shouter.call("shout", "from a handler") == "shouted"
        writer = socketio.RedisManager(f"redis://127.0.0.1:{redis_port}/0", write_only=True)
        with tracer.start_as_current_span("external"):
            writer.emit("news", "from outside", room="lobby")
        writer.redis.close()
        wait_for(lambda: len(received) >= 2)
        shouter.disconnect()
        listener.disconnect()
    assert received == [("news", ["from a handler"]), ("news", ["from outside"])]
    a_spans = server_a.spans()
    a_handler = next(s for s in a_spans if s["name"] == "process shout /")
    a_send = next(
        s for s in a_spans if s["name"] == "send news /" and s["parent_id"] == a_handler["context"]["span_id"]
    )
    external = telemetry.one("send news /")  # the write-only manager's emit
    assert external.kind == SpanKind.PRODUCER and parent(external) == sid(telemetry.one("external"))
    assert "wstrace.socketio.recipients" not in external.attributes
    roots = {
        "from a handler": (a_send["context"]["trace_id"], a_send["context"]["span_id"]),
        "from outside": shared.hex_ids(external),
    }
    shared.check_redis_hops(received, telemetry.named("process news /"), roots, server_b.spans())


# The tornado mount ----------------------------------------------------------------------------------------------


def test_tornado_mount(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """An ``AsyncServer`` mounted in a tornado app (``socketio.get_tornado_handler``), with the tornado adapter on
    too (envelope negotiated): the event spans as on any mount, and the tornado adapter stands down on the
    engine.io connection (no WebSocket spans or envelope of its own)."""
    from tests.instrumentation.tornado_app import server  # noqa: PLC0415
    from wstrace.instrumentation.tornado import TornadoInstrumentor  # noqa: PLC0415

    instrument()
    tornado_instrumentor = TornadoInstrumentor()
    tornado_instrumentor.instrument(tracer_provider=telemetry.provider, envelope="negotiate")
    tracer = telemetry.provider.get_tracer("test")
    records: list[dict[str, Any]] = []
    received: list[tuple[str, list[Any]]] = []

    async def scenario() -> Any:
        sio = make_server(records, async_mode="tornado")
        async with server(socketio.get_tornado_handler(sio), "/socket.io/") as ws_url:
            client = shared.make_client(received)
            await client.connect(ws_url.replace("ws://", "http://")[: -len("/socket.io/")], transports=["websocket"])
            with tracer.start_as_current_span("job"):
                answer = await client.call("echo", "hi")
            await client.disconnect()
            return answer

    try:
        assert shared.run(scenario()) == "hi"
    finally:
        tornado_instrumentor.uninstrument()
    assert received == [("echoed", ["hi"])]
    shared.check_stood_down(telemetry)
    send = telemetry.one("send echo /")
    handler = telemetry.one("process echo /")
    assert parent(send) == sid(telemetry.one("job")) and parent(handler) == sid(send)
    assert [r["span_id"] for r in records if r["event"] == "echo"] == [sid(handler)]
    assert parent(telemetry.one("process echoed /")) == sid(telemetry.one("send echoed /"))
    shared.check_server_addresses(telemetry)  # from tornado's request, not engine.io's placeholders
