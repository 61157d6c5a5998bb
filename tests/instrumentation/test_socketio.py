"""The python-socketio adapter (stage 1: asyncio server and client over the WebSocket transport, AsyncRedisManager).

Real servers on loopback (aiohttp, and uvicorn for the ASGI mount), real python-socketio clients, a real
redis-server with a second server process, and the official npm ``socket.io-client`` under Node as the
un-instrumented peer.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import socketio
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from tests.conftest import Telemetry
from tests.instrumentation.socketio_app import (
    BAD_CARRIERS,
    HOSTILE_HEADERS,
    HOSTILE_QUERY,
    PEERS,
    ServerProcess,
    aiohttp_server,
    aiohttp_two_sites,
    asgi_server,
    call_once,
    check_bad_carriers,
    check_bare_client,
    check_broadcast,
    check_echo_trace,
    check_hostile_handshake,
    check_redis_hops,
    check_server_call,
    check_stood_down,
    close_manager,
    hex_ids,
    instrumenting,
    make_client,
    make_server,
    parent,
    peer_env,
    python_client,
    run,
    sid,
    tid,
    until_received,
)
from wstrace.instrumentation.socketio import SocketioInstrumentor
from wstrace.instrumentation.socketio._common import CARRIER_KEY


@pytest.fixture
def instrument(telemetry: Telemetry) -> Iterator[Callable[..., None]]:
    yield from instrumenting(telemetry)


# One connection, both ends instrumented ------------------------------------------------------------------------


def test_event_spans_and_ack_across_instrumented_ends(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """Client emit → server handler → server emit → client handler, one trace; the ack runs in the emit's trace;
    the handlers see their arguments without the carrier."""
    instrument()
    tracer = telemetry.provider.get_tracer("test")
    records: list[dict[str, Any]] = []
    received: list[tuple[str, list[Any]]] = []
    acked: list[Any] = []

    async def scenario() -> Any:
        sio = make_server(records)
        async with aiohttp_server(sio) as url:
            client = make_client(received)
            await client.connect(url, transports=["websocket"])
            with tracer.start_as_current_span("job"):
                await client.emit("echo", ({"a": 1}, "two"), callback=lambda *args: acked.append(args))
                answer = await client.call("echo", [1, 2])
            await asyncio.sleep(0.2)
            await client.disconnect()
            return answer

    answer = run(scenario())
    assert answer == [1, 2]
    assert acked == [({"a": 1}, "two")]
    echoes = [r for r in records if r["event"] == "echo"]
    assert [r["args"] for r in echoes] == [[{"a": 1}, "two"], [[1, 2]]]
    assert received == [("echoed", [{"a": 1}, "two"]), ("echoed", [[1, 2]])]

    check_echo_trace(telemetry, records)


def test_server_call_and_client_answer(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """``AsyncServer.call``: the client's handler is a child of the server's emit; the server's ack span is too,
    and the handler that called resumes in its own span."""
    instrument()
    records: list[dict[str, Any]] = []
    received: list[tuple[str, list[Any]]] = []

    async def scenario() -> Any:
        sio = make_server(records)
        async with aiohttp_server(sio) as url:
            client = make_client(received, answer="because")
            await client.connect(url, transports=["websocket"])
            answer = await client.call("ask", "why?")
            await client.disconnect()
            return answer

    assert run(scenario()) == "because"
    check_server_call(telemetry, records, received)


def test_broadcast_is_one_emit_span(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """An emit to a room of three clients is one PRODUCER span (destination: the room, three recipients), and
    each client's handler is its child."""
    instrument()
    records: list[dict[str, Any]] = []
    received: list[list[tuple[str, list[Any]]]] = [[], [], []]

    async def scenario() -> None:
        sio = make_server(records)
        async with aiohttp_server(sio) as url:
            clients = [make_client(r) for r in received]
            for client in clients:
                await client.connect(url, transports=["websocket"])
                assert await client.call("join") == "joined"
            assert await clients[0].call("shout", "hello") == "shouted"
            await asyncio.sleep(0.2)
            for client in clients:
                await client.disconnect()

    run(scenario())
    check_broadcast(telemetry, received)


def test_handshake_context_and_session(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """The client's connect is a CLIENT handshake span that sends its context; the server's handshake span (from
    the engine.io request) continues it, and both ends record one session id."""
    instrument()
    tracer = telemetry.provider.get_tracer("test")

    async def scenario() -> None:
        sio = make_server([])
        async with aiohttp_server(sio) as url:
            client = make_client([])
            with tracer.start_as_current_span("app"):
                await client.connect(url, transports=["websocket"])
            await client.disconnect()

    run(scenario())
    app = telemetry.one("app")
    client_hs = [s for s in telemetry.spans if s.kind == SpanKind.CLIENT]
    server_hs = [s for s in telemetry.spans if s.kind == SpanKind.SERVER]
    assert len(client_hs) == len(server_hs) == 1
    assert parent(client_hs[0]) == sid(app)
    assert parent(server_hs[0]) == sid(client_hs[0])
    assert server_hs[0].attributes["url.path"] == "/socket.io/"
    assert server_hs[0].attributes["wstrace.context.source"] == "headers"
    assert client_hs[0].attributes["websocket.session.id"] == server_hs[0].attributes["websocket.session.id"]


# The WebSocket-level adapters stand down ------------------------------------------------------------------------


def test_asgi_mount_and_middleware_stand_down(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """``socketio.ASGIApp`` under uvicorn, wrapped in the wstrace ASGI middleware: the middleware leaves the
    engine.io connection alone (one server handshake span, no WebSocket message spans), the Socket.IO spans are
    there, and the middleware still traces a plain WebSocket route next to it."""
    from starlette.applications import Starlette  # noqa: PLC0415
    from starlette.routing import Mount, WebSocketRoute  # noqa: PLC0415
    from starlette.websockets import WebSocket  # noqa: PLC0415

    from wstrace.instrumentation.asgi import WstraceASGIMiddleware  # noqa: PLC0415

    instrument()
    records: list[dict[str, Any]] = []
    received: list[tuple[str, list[Any]]] = []
    sio = make_server(records, async_mode="asgi")

    async def plain(ws: WebSocket) -> None:
        await ws.accept()
        await ws.send_text(await ws.receive_text())
        await ws.close()

    inner = Starlette(routes=[WebSocketRoute("/plain", plain), Mount("/", socketio.ASGIApp(sio))])
    app = WstraceASGIMiddleware(inner, tracer_provider=telemetry.provider, envelope="negotiate")

    async def scenario(url: str) -> Any:
        import aiohttp  # noqa: PLC0415

        client = make_client(received)
        await client.connect(url, transports=["websocket"])
        answer = await client.call("echo", "hi")
        await client.disconnect()
        async with aiohttp.ClientSession() as session, session.ws_connect(url.replace("http", "ws") + "/plain") as ws:
            await ws.send_str("plain")
            assert (await ws.receive()).data == "plain"
        return answer

    with asgi_server(app) as url:
        assert run(scenario(url)) == "hi"
    assert received == [("echoed", ["hi"])]
    assert [r["args"] for r in records if r["event"] == "echo"] == [["hi"]]
    server_hs = [s for s in telemetry.spans if s.kind == SpanKind.SERVER]
    paths = sorted(str(s.attributes.get("url.path")) for s in server_hs)
    assert paths == ["/plain", "/socket.io/"]  # one handshake span each: none from the middleware on engine.io
    frames = [s for s in telemetry.spans if "websocket.message.type" in (s.attributes or {})]
    assert frames  # the plain route's messages
    assert all("socket.io" not in s.name for s in frames)
    assert len(frames) == 2  # the plain route's receive and send, nothing of engine.io's frames
    assert telemetry.named("process echo /")


def test_aiohttp_adapter_stands_down(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """With the aiohttp adapter on too, an engine.io connection gets no aiohttp WebSocket spans, headers or
    envelope (aiohttp is both python-socketio's client transport and, here, its server)."""
    from wstrace.instrumentation.aiohttp import AiohttpInstrumentor  # noqa: PLC0415

    instrument()
    aiohttp_instrumentor = AiohttpInstrumentor()
    aiohttp_instrumentor.instrument(tracer_provider=telemetry.provider, envelope="negotiate")
    received: list[tuple[str, list[Any]]] = []
    try:

        async def scenario() -> Any:
            sio = make_server([])
            async with aiohttp_server(sio) as url:
                client = make_client(received)
                await client.connect(url, transports=["websocket"])
                answer = await client.call("echo", "hi")
                await client.disconnect()
                return answer

        assert run(scenario()) == "hi"
    finally:
        aiohttp_instrumentor.uninstrument()
    assert received == [("echoed", ["hi"])]
    check_stood_down(telemetry)


# Peers without wstrace ----------------------------------------------------------------------------------------


def _serve_and_run(client: Callable[[str], dict[str, Any]]) -> dict[str, Any]:
    """Serve the test server in a thread of its own (the client runs in another process) and run ``client``."""
    records: list[dict[str, Any]] = []
    sio = make_server(records, async_mode="asgi")
    with asgi_server(socketio.ASGIApp(sio)) as url:
        return client(url)


def test_bare_python_client_sees_the_same(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """A bare python-socketio client gets exactly the same events, arguments and acks from an instrumented server
    as from a bare one."""
    bare = _serve_and_run(python_client)
    instrument()
    check_bare_client(bare, _serve_and_run(python_client))
    assert telemetry.named("process echo /")  # the server was traced


def test_bare_client_ignores_the_answer(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """A bare client that sends the offer anyway connects and talks: the answer in CONNECT is ignored (the
    carriers that then follow are what it asked for, so only the connection and the acks are compared)."""
    instrument()
    traced = _serve_and_run(lambda url: python_client(url, "offer"))
    assert traced["acks"][:3] == [[{"a": 1}, "two", [3]], None, "joined"]
    # The server did take the offer: the events that followed carry the carrier, which this client keeps.
    echoed = next(args for event, args in traced["received"] if event == "echoed")
    assert echoed[:3] == [{"a": 1}, "two", [3]] and CARRIER_KEY in echoed[3]


@pytest.fixture(scope="module")
def socketio_client_js(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``node_modules`` with the official ``socket.io-client@4``, installed with npm into a fresh directory."""
    from tests.js.node import require_node  # noqa: PLC0415

    _node, npm = require_node()
    where = tmp_path_factory.mktemp("socketio-node")
    result = subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--loglevel=error", "--no-save", "socket.io-client@4"],
        cwd=where,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if result.returncode != 0:
        from tests.missing import skip_or_fail  # noqa: PLC0415

        skip_or_fail(f"npm install socket.io-client@4 failed: {result.stdout}\n{result.stderr}")
    return where / "node_modules"


def _node_client(node_modules: Path, url: str, *extra: str) -> dict[str, Any]:
    from tests.js.node import require_node  # noqa: PLC0415

    node, _npm = require_node()
    env = {**peer_env(), "NODE_PATH": str(node_modules)}
    result = subprocess.run(
        [node, str(PEERS / "socketio_client.js"), url, *extra],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["error"] is None, out
    return out


def test_node_client_sees_the_same(
    telemetry: Telemetry, instrument: Callable[..., None], socketio_client_js: Path
) -> None:
    """The official npm ``socket.io-client`` gets exactly the same events, arguments and acks from an instrumented
    python-socketio server as from a bare one; with the offer header sent, it still connects (the answer in
    CONNECT is ignored)."""
    bare = _serve_and_run(lambda url: _node_client(socketio_client_js, url))
    instrument()
    traced = _serve_and_run(lambda url: _node_client(socketio_client_js, url))
    assert traced == bare
    assert ["echoed", [{"a": 1}, "two", [3]]] in bare["received"]
    assert ["news", ["hello"]] in bare["received"]
    assert ["question", ["why?", None]] in bare["received"]  # onAny sees the ack function (null in JSON)
    assert bare["acks"] == [{"a": 1}, None, "joined", "shouted", {"answer": "why?"}]
    assert telemetry.named("process echo /") and telemetry.named("send news /")
    offering = _serve_and_run(lambda url: _node_client(socketio_client_js, url, "offer"))
    assert offering["acks"][:4] == bare["acks"][:4]


def test_instrumented_client_with_bare_server(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """An instrumented client facing a bare server (another process) gets no answer, so it adds no carrier: the
    server's handler gets exactly the arguments sent."""
    server = ServerProcess(None, bare=True)
    try:
        url = server.url
        instrument()

        assert run(call_once(url, ({"a": 1}, "two"))) == ({"a": 1}, "two")
    finally:
        server.stop()
    assert server.wait_for("echo")["args"] == [{"a": 1}, "two"]
    assert telemetry.named("send echo /")


# Bad input -------------------------------------------------------------------------------------------------------


def test_bad_carriers_are_delivered_unchanged(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """Between two instrumented ends, an event whose last argument is a malformed, oversized or foreign carrier is
    delivered unchanged, in a fresh trace (linked to the handshake); a well-formed carrier whose context does
    not parse is removed, and gives a fresh trace too."""
    instrument()
    records: list[dict[str, Any]] = []
    bare_emit = socketio.AsyncClient.emit.__wrapped__  # the library's own emit: sends exactly these arguments
    tracer = telemetry.provider.get_tracer("test")

    async def scenario() -> None:
        sio = make_server(records)
        async with aiohttp_server(sio) as url:
            client = make_client([])
            await client.connect(url, transports=["websocket"])
            with tracer.start_as_current_span("sender"):
                for bad in BAD_CARRIERS:
                    await bare_emit(client, "echo", ("payload", bad))
            await asyncio.sleep(0.3)
            await client.disconnect()

    run(scenario())
    check_bad_carriers(telemetry, records)


def test_hostile_handshake_never_raises(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """A connection request with a hostile query and headers (garbage traceparent, huge values, a bad offer)
    connects and works; the server's handshake span starts a fresh trace."""
    instrument()
    records: list[dict[str, Any]] = []

    async def scenario(url: str) -> Any:
        client = socketio.AsyncClient(reconnection=False)
        await client.connect(url + HOSTILE_QUERY, headers=HOSTILE_HEADERS, transports=["websocket"])
        answer = await client.call("echo", "ok")
        await client.disconnect()
        return answer

    async def main() -> Any:
        sio = make_server(records)
        async with aiohttp_server(sio) as url:
            return await scenario(url)

    assert run(main()) == "ok"
    check_hostile_handshake(telemetry, records)


# Across processes, through Redis ------------------------------------------------------------------------------


async def across(url_b: str, url_a: str, received: list[tuple[str, list[Any]]]) -> tuple[Any, Any]:
    """A client of server B in ``lobby``, recording what it receives, and a client of server A, once both servers'
    managers are subscribed."""
    listener = make_client(received)
    await listener.connect(url_b, transports=["websocket"])
    assert await listener.call("join") == "joined"
    client = make_client([])
    await client.connect(url_a, transports=["websocket"])
    await asyncio.sleep(0.3)  # both managers subscribed
    return listener, client


def test_redis_emit_from_a_handler_reaches_another_process(
    telemetry: Telemetry, instrument: Callable[..., None], redis_port: int
) -> None:
    """Server A (this process) handles ``shout`` and emits ``news`` to ``lobby`` through AsyncRedisManager; server
    B (another process) delivers it to its client: one trace from A's handler through B's emit to the client's
    handler. A background emit on A and a write-only manager's emit continue their callers' traces too."""
    instrument()
    tracer = telemetry.provider.get_tracer("test")
    received: list[tuple[str, list[Any]]] = []
    with ServerProcess(redis_port) as server_b:
        url_b = server_b.url

        async def scenario() -> None:
            records: list[dict[str, Any]] = []
            manager = socketio.AsyncRedisManager(f"redis://127.0.0.1:{redis_port}/0")
            sio_a = make_server(records, client_manager=manager)
            async with aiohttp_server(sio_a) as url_a:
                listener, shouter = await across(url_b, url_a, received)
                assert await shouter.call("shout", "from a handler") == "shouted"
                with tracer.start_as_current_span("background"):
                    await sio_a.emit("news", "from a task", room="lobby")
                writer = socketio.AsyncRedisManager(f"redis://127.0.0.1:{redis_port}/0", write_only=True)
                with tracer.start_as_current_span("external"):
                    await writer.emit("news", "from outside", room="lobby")
                await until_received(received, 3)
                await shouter.disconnect()
                await listener.disconnect()
                await close_manager(writer)
            await close_manager(manager)

        run(scenario())
    assert received == [("news", ["from a handler"]), ("news", ["from a task"]), ("news", ["from outside"])]
    a_handler = telemetry.one("process shout /")
    a_sends = [s for s in telemetry.named("send news /") if s.kind == SpanKind.PRODUCER]
    roots = {
        "from a handler": next(s for s in a_sends if parent(s) == sid(a_handler)),
        "from a task": next(s for s in a_sends if parent(s) == sid(telemetry.one("background"))),
        "from outside": next(s for s in a_sends if parent(s) == sid(telemetry.one("external"))),
    }
    hops = {text: hex_ids(span) for text, span in roots.items()}
    check_redis_hops(received, telemetry.named("process news /"), hops, server_b.spans())


def test_a_stream_through_redis_is_one_span_in_each_process_and_one_receive_stream(
    telemetry: Telemetry, instrument: Callable[..., None], redis_port: int
) -> None:
    """A handler on server A streams 5 ``news`` emits to ``lobby`` through AsyncRedisManager; server B delivers
    them to its client: one ``send news /`` stream span on A, one on B (its child, the 5 deliveries), and one
    ``process news /`` receive stream on the client (B's child), not a span per token in each."""
    instrument()
    received: list[tuple[str, list[Any]]] = []
    with ServerProcess(redis_port) as server_b:
        url_b = server_b.url

        async def scenario() -> None:
            manager = socketio.AsyncRedisManager(f"redis://127.0.0.1:{redis_port}/0")
            sio_a = make_server([], client_manager=manager)

            @sio_a.event
            async def stream(sid: str, count: int) -> str:
                for n in range(count):
                    await sio_a.emit("news", f"token {n}", room="lobby")
                return "streamed"

            async with aiohttp_server(sio_a) as url_a:
                listener, asker = await across(url_b, url_a, received)
                assert await asker.call("stream", 5) == "streamed"
                await until_received(received, 5)
                await asker.disconnect()
                await listener.disconnect()  # B's delivery stream ends with its connection
            await close_manager(manager)

        run(scenario())
    assert received == [("news", [f"token {n}"]) for n in range(5)]
    (a_stream,) = [s for s in telemetry.named("send news /") if s.kind == SpanKind.PRODUCER]
    assert a_stream.attributes["wstrace.stream.chunk_count"] == 5
    (b_stream,) = [s for s in server_b.spans() if s["name"] == "send news /"]
    assert b_stream["parent_id"] == hex_ids(a_stream)[1]  # B's deliveries continue A's stream
    assert b_stream["attributes"]["wstrace.stream.chunk_count"] == 5
    assert b_stream["attributes"]["wstrace.socketio.recipients"] == 1
    (receiving,) = telemetry.named("process news /")
    assert receiving.attributes["wstrace.stream.chunk_count"] == 5
    assert f"0x{parent(receiving):016x}" == b_stream["context"]["span_id"]


def test_redis_message_from_a_bare_process_and_a_bad_key(
    telemetry: Telemetry, instrument: Callable[..., None], redis_port: int
) -> None:
    """Emit messages published without wstrace's key, or with a malformed one, are delivered unchanged by an
    instrumented server, each in a fresh trace."""
    import redis  # noqa: PLC0415

    instrument()
    received: list[tuple[str, list[Any]]] = []
    with ServerProcess(redis_port) as server_b:
        url_b = server_b.url

        async def scenario() -> None:
            listener = make_client(received)
            await listener.connect(url_b, transports=["websocket"])
            assert await listener.call("join") == "joined"
            await asyncio.sleep(0.3)
            publisher = redis.Redis(port=redis_port)
            for key in (None, "junk", {"traceparent": 5}, {"traceparent": "00-" + "1" * 9000}):
                message = {
                    "method": "emit",
                    "event": "news",
                    "data": [str(key)[:20]],
                    "namespace": "/",
                    "room": "lobby",
                    "skip_sid": None,
                    "callback": None,
                    "host_id": "elsewhere",
                }
                if key is not None:
                    message["wstrace"] = key
                publisher.publish("socketio", json.dumps(message))
            publisher.close()
            await until_received(received, 4)
            await listener.disconnect()

        run(scenario())
    assert [args for _e, args in received] == [["None"], ["junk"], ["{'traceparent': 5}"], ["{'traceparent': '00-"]]
    b_sends = [s for s in server_b.spans() if s["name"] == "send news /"]
    assert len(b_sends) == 4
    assert all(s["parent_id"] is None for s in b_sends)
    assert len({s["context"]["trace_id"] for s in b_sends}) == 4
    assert not [s for s in telemetry.spans if s.name == "process news /" and s.parent is None]  # carried from B


def test_redis_delivery_calls_the_message_hook(
    telemetry: Telemetry, instrument: Callable[..., None], redis_port: int
) -> None:
    """A server delivering another process's emit calls the message hook on its ``send`` span with the event and
    the published arguments; not for a binary emit, whose arguments are published taken apart."""
    import redis  # noqa: PLC0415

    calls: list[tuple[str, Any, str]] = []
    instrument(message_hook=lambda span, payload, direction: calls.append((span.name, payload, direction)))
    received: list[tuple[str, list[Any]]] = []

    async def scenario() -> None:
        manager = socketio.AsyncRedisManager(f"redis://127.0.0.1:{redis_port}/0")
        sio = make_server([], client_manager=manager)
        async with aiohttp_server(sio) as url:
            listener = make_client(received)
            await listener.connect(url, transports=["websocket"])
            assert await listener.call("join") == "joined"
            await asyncio.sleep(0.3)  # the manager subscribed
            calls.clear()
            publisher = redis.Redis(port=redis_port)
            common = {"method": "emit", "event": "news", "namespace": "/", "room": "lobby", "skip_sid": None}
            for data, binary in (([{"a": 1}, "two"], False), ([[{"_placeholder": True, "num": 0}], "aGk="], True)):
                message = {**common, "data": data, "binary": binary, "callback": None, "host_id": "elsewhere"}
                publisher.publish("socketio", json.dumps(message))
            publisher.close()
            await until_received(received, 2)
            await listener.disconnect()
        await close_manager(manager)

    run(scenario())
    assert received == [("news", [{"a": 1}, "two"]), ("news", [b"hi"])]
    assert len(telemetry.named("send news /")) == 2
    assert [c for c in calls if c[0] == "send news /"] == [("send news /", ["news", {"a": 1}, "two"], "sent")]


def test_uninstrument_restores(telemetry: Telemetry) -> None:
    """``uninstrument()`` removes every patch: no spans, and the CONNECT answer is gone."""
    instrumentor = SocketioInstrumentor()
    instrumentor.instrument(tracer_provider=telemetry.provider)
    instrumentor.uninstrument()

    async def scenario() -> Any:
        sio = make_server([])
        async with aiohttp_server(sio) as url:
            return await call_once(url, "x")

    assert run(scenario()) == "x"
    assert telemetry.spans == []
    assert not hasattr(socketio.AsyncServer.emit, "__wrapped__")


def test_trace_current_span_untouched_after_handler(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """After an instrumented emit returns, the caller's current span is its own again."""
    instrument()
    tracer = telemetry.provider.get_tracer("test")
    seen: list[Any] = []

    async def scenario() -> None:
        sio = make_server([])
        async with aiohttp_server(sio) as url:
            client = make_client([])
            await client.connect(url, transports=["websocket"])
            with tracer.start_as_current_span("caller") as caller:
                await client.emit("echo", "x")
                seen.append(trace.get_current_span() is caller)
            await client.disconnect()

    run(scenario())
    assert seen == [True]


@pytest.mark.parametrize("trust", ["link", "ignore"])
def test_trust_link_or_ignore(telemetry: Telemetry, instrument: Callable[..., None], trust: str) -> None:
    """Under ``trust=link`` a handler's span is a new trace linked (``remote``) to the sender's span; under
    ``ignore`` it is a new trace with no link to it. Either way the carrier is removed."""
    instrument(trust=trust)
    records: list[dict[str, Any]] = []

    async def scenario() -> None:
        sio = make_server(records)
        async with aiohttp_server(sio) as url:
            client = make_client([])
            await client.connect(url, transports=["websocket"])
            await client.call("echo", "x")
            await client.disconnect()

    run(scenario())
    assert [r["args"] for r in records if r["event"] == "echo"] == [["x"]]
    send = telemetry.one("send echo /")
    handler = telemetry.one("process echo /")
    assert handler.parent is None and tid(handler) != tid(send)
    remote = [link for link in handler.links if link.attributes["wstrace.link.kind"] == "remote"]
    if trust == "link":
        assert [link.context.span_id for link in remote] == [sid(send)]
    else:
        assert remote == []


def test_message_spans_off(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """``message_spans=False``: no event spans, and the handler still runs in the sender's context (the carrier
    holds the context current at the emit)."""
    instrument(message_spans=False)
    tracer = telemetry.provider.get_tracer("test")
    records: list[dict[str, Any]] = []

    async def scenario() -> None:
        sio = make_server(records)
        async with aiohttp_server(sio) as url:
            client = make_client([])
            await client.connect(url, transports=["websocket"])
            with tracer.start_as_current_span("caller"):
                await client.call("echo", "x")
            await client.disconnect()

    run(scenario())
    assert not [s for s in telemetry.spans if s.attributes.get("messaging.system") == "socket.io"]
    assert [r["span_id"] for r in records if r["event"] == "echo"] == [sid(telemetry.one("caller"))]


@pytest.mark.parametrize(
    "environ",
    [
        {"asgi.scope": {"server": None, "client": ["x"]}},
        {"asgi.scope": {"server": ("h", "not a port"), "client": (None, 1)}},
        {"aiohttp.request": object()},
        {"tornado.handler": object()},
        {"SERVER_NAME": "asgi", "SERVER_SOFTWARE": "asgi", "SERVER_PORT": "0", "REMOTE_ADDR": "127.0.0.1"},
        {"SERVER_NAME": 3, "SERVER_PORT": "99999", "REMOTE_ADDR": b"x", "REMOTE_PORT": True},
    ],
    ids=["asgi-short", "asgi-bad-port", "aiohttp-no-transport", "tornado-no-request", "placeholders", "garbage"],
)
def test_odd_environs_give_no_address(environ: dict[str, Any]) -> None:
    """What an environ holds that is not an address is left out (``None``), never raised."""
    from wstrace.instrumentation.socketio._server import _addresses  # noqa: PLC0415

    (server_host, server_port), (client_host, client_port) = _addresses(environ)
    assert server_port is None and client_host is None and client_port is None
    assert server_host in (None, "h")


# excluded_urls ----------------------------------------------------------------------------------------------------


def excluding(port_of: Callable[[], str], server_only: bool = False) -> Callable[[str], bool]:
    """An ``excluded_urls`` callable matching the URLs of the port in ``port_of()`` (the server's ``ws://`` one
    only with ``server_only``; the client's is ``http://``)."""

    def excluded(url: str) -> bool:
        return f":{port_of().rsplit(':', 1)[1]}/" in url and (not server_only or url.startswith("ws://"))

    return excluded


def test_excluded_server_end_answers_nothing(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """Only the server excludes the connection: it records nothing and never answers the traced client's offer,
    so no event carries a carrier either way; the client traces its own end, its handler in a new trace."""
    urls: list[str] = []
    instrument(excluded_urls=excluding(lambda: urls[1], server_only=True))
    records: list[dict[str, Any]] = []
    received: list[tuple[str, list[Any]]] = []

    async def scenario() -> Any:
        sio = make_server(records)
        async with aiohttp_two_sites(sio) as both:
            urls.extend(both)
            client = make_client(received)
            await client.connect(urls[1], transports=["websocket"])
            answer = await client.call("echo", "x")
            await asyncio.sleep(0.2)
            await client.disconnect()
            return answer

    assert run(scenario()) == "x"
    assert [r["args"] for r in records if r["event"] == "echo"] == [["x"]]
    assert received == [("echoed", ["x"])]
    assert not [s.name for s in telemetry.spans if s.kind in (SpanKind.SERVER,) or s.name == "process echo /"]
    assert sorted(s.name for s in telemetry.spans) == [
        "GET /socket.io/",
        "ack echo /",
        "close /socket.io/",
        "process echoed /",
        "send echo /",
    ]
    handler = telemetry.one("process echoed /")
    assert handler.parent is None and [lk.attributes["wstrace.link.kind"] for lk in handler.links] == ["handshake"]


def test_broadcast_to_excluded_and_traced_clients(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """A room holds a traced client and one whose URL is excluded (on both ends): an emit to the room is one span
    counting the traced recipient only, the excluded client gets the event without a carrier and records
    nothing; its own ``shout`` gets no handler span, while the emit it makes reaches the traced client in a
    span (a run of pushes with no context, so ended by the idle gap, short here); an emit to it alone
    (``echoed``) gets none."""
    urls: list[str] = []
    instrument(excluded_urls=excluding(lambda: urls[1]), stream_idle=0.05)
    records: list[dict[str, Any]] = []
    traced: list[tuple[str, list[Any]]] = []
    alone: list[tuple[str, list[Any]]] = []

    async def scenario() -> None:
        sio = make_server(records)
        async with aiohttp_two_sites(sio) as both:
            urls.extend(both)
            clients = [make_client(traced), make_client(alone)]
            for client, url in zip(clients, urls, strict=True):
                await client.connect(url, transports=["websocket"])
                assert await client.call("join") == "joined"
            telemetry.exporter.clear()
            assert await clients[0].call("shout", "hello") == "shouted"
            await asyncio.sleep(0.2)
            first = sorted(s.name for s in telemetry.spans)
            assert first == ["ack shout /", "process news /", "process shout /", "send news /", "send shout /"]
            news = telemetry.one("send news /")
            assert news.attributes["wstrace.socketio.recipients"] == 1
            assert parent(telemetry.one("process news /")) == sid(news)
            telemetry.exporter.clear()
            assert await clients[1].call("shout", "psst") == "shouted"
            assert await clients[1].call("echo", "me") == "me"
            await asyncio.sleep(0.2)
            news = telemetry.one("send news /")
            assert news.parent is None and news.attributes["wstrace.socketio.recipients"] == 1
            assert sorted(s.name for s in telemetry.spans) == ["process news /", "send news /"]
            for client in clients:
                await client.disconnect()

    run(scenario())
    assert traced == [("news", ["hello"]), ("news", ["psst"])]
    assert alone == [("news", ["hello"]), ("news", ["psst"]), ("echoed", ["me"])]


def test_zero_code(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """A bare server run under ``opentelemetry-instrument`` (entry point ``wstrace-socketio``) traces its events
    and continues an instrumented client's."""
    import importlib.metadata  # noqa: PLC0415

    from tests.missing import skip_or_fail  # noqa: PLC0415

    names = {e.name for e in importlib.metadata.entry_points(group="opentelemetry_instrumentor")}
    if "wstrace-socketio" not in names:
        skip_or_fail("the installed wstrace has no wstrace-socketio entry point: reinstall it (pip install -e .)")
    server = ServerProcess(None, zero_code=True)
    try:
        url = server.url
        instrument()

        assert run(call_once(url, "zero")) == "zero"
    finally:
        output = server.stop()
    assert server.wait_for("echo")["args"] == ["zero"]  # the carrier was removed before the handler
    handler = next((s for s in server.spans() if s["name"] == "process echo /"), None)
    assert handler is not None, output
    send = telemetry.one("send echo /")
    assert handler["parent_id"] == f"0x{send.context.span_id:016x}"
