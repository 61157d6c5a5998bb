"""The tornado adapter against real loopback servers and clients (tornado's own, and a websockets peer)."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode
from tornado import gen
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application
from tornado.websocket import WebSocketHandler, websocket_connect
from websockets.asyncio.client import connect as websockets_connect
from websockets.asyncio.server import ServerConnection, serve as websockets_serve

from tests.conftest import Telemetry
from tests.console import console_spans
from tests.instrumentation import contract
from tests.instrumentation.contract import linked_to, parent_id, span_id, trace_id
from tests.instrumentation.tornado_app import Echo, binary, exchange, server, until_closed
from wstrace.instrumentation.tornado import TornadoInstrumentor
from wstrace.instrumentation.websockets import WebsocketsInstrumentor


@pytest.fixture
def instrument(telemetry: Telemetry) -> Iterator[Callable[..., None]]:
    instrumentor = TornadoInstrumentor()

    def do(**options: Any) -> None:
        options.setdefault("tracer_provider", telemetry.provider)
        instrumentor.instrument(**options)

    yield do
    instrumentor.uninstrument()


def current_span_id() -> int:
    return trace.get_current_span().get_span_context().span_id


def run(coro: Awaitable[Any], telemetry: Telemetry | None = None) -> Any:
    """Run a scenario; then let the server side finish recording (it ends a moment after the client)."""

    async def main() -> Any:
        result = await coro
        for _ in range(100):
            await asyncio.sleep(0.01)
            if telemetry is None or not telemetry.open_spans.names():
                break
        return result

    return asyncio.run(main())


def handshake(telemetry: Telemetry, kind: SpanKind, route: str = "/chat") -> ReadableSpan:
    return next(s for s in telemetry.named(f"GET {route}") if s.kind is kind)


# Envelope propagation and the application's view ---------------------------------


def test_client_send_continues_on_server_receive(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """on_message gets the bare payload inside the client's trace; its reply is a child of the receive span."""
    instrument(model="message", envelope="negotiate")
    tracer = telemetry.provider.get_tracer("test")
    seen: list[Any] = []

    class Handler(WebSocketHandler):
        def on_message(self, message: str | bytes) -> None:
            seen.extend([message, trace.get_current_span().get_span_context().trace_id])
            self.write_message(message)

    async def scenario() -> None:
        async with server(Handler) as url:
            conn = await websocket_connect(url)
            with tracer.start_as_current_span("ask"):
                await conn.write_message("question")
                assert await conn.read_message() == "question"
            await until_closed(conn)

    run(scenario(), telemetry)
    ask = telemetry.one("ask")
    client_send = next(s for s in telemetry.named("send /chat") if parent_id(s) == span_id(ask))
    server_receive = next(s for s in telemetry.named("receive /chat") if parent_id(s) == span_id(client_send))
    assert seen == ["question", trace_id(ask)], "the app sees the bare payload, inside the client's trace"
    assert linked_to(server_receive, handshake(telemetry, SpanKind.SERVER))
    reply = next(s for s in telemetry.named("send /chat") if parent_id(s) == span_id(server_receive))
    client_receive = next(s for s in telemetry.named("receive /chat") if parent_id(s) == span_id(reply))
    assert client_receive.attributes["websocket.message.type"] == "text"
    contract.no_open_spans(telemetry)


def test_coroutine_on_message(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """A coroutine on_message runs inside its receive span, which ends when the coroutine does."""
    instrument(model="message", envelope="negotiate")
    inside: list[int] = []
    on_close: list[int] = []

    class Handler(WebSocketHandler):
        async def on_message(self, message: str | bytes) -> None:
            inside.append(current_span_id())
            await asyncio.sleep(0.05)
            inside.append(current_span_id())
            await self.write_message(message, binary=binary(message))

        def on_close(self) -> None:
            on_close.append(current_span_id())

    async def scenario() -> list[Any]:
        async with server(Handler) as url:
            return await exchange(url, ["slow", b"\x01"])

    assert run(scenario(), telemetry) == ["slow", b"\x01"]
    server_hs = handshake(telemetry, SpanKind.SERVER)
    receives = [s for s in telemetry.named("receive /chat") if linked_to(s, server_hs)]
    assert len(receives) == 2
    assert inside == [span_id(receives[0])] * 2 + [span_id(receives[1])] * 2
    assert on_close == [0], "the frame loop's task no longer holds the last receive span"
    close = telemetry.one("close /chat", **{"websocket.close.initiator": "remote"})
    assert receives[1].end_time < close.start_time, "ended when the coroutine returned, not at close"
    for receive in receives:
        reply = next(s for s in telemetry.named("send /chat") if parent_id(s) == span_id(receive))
        assert receive.end_time >= reply.end_time, "the receive span lasts until the coroutine returns"
        assert receive.end_time - receive.start_time >= 40_000_000
    contract.no_open_spans(telemetry)


def test_server_push_continues_on_client_receive(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """A message written in open() continues on the client's receive span, current after read_message."""
    instrument(model="message", envelope="negotiate")
    tracer = telemetry.provider.get_tracer("test")
    current: list[int] = []

    class Pusher(WebSocketHandler):
        def open(self) -> None:
            with tracer.start_as_current_span("server-push"):
                self.write_message(b"\x00binary push", binary=True)

    async def scenario() -> Any:
        async with server(Pusher) as url:
            conn = await websocket_connect(url)
            message = await conn.read_message()
            current.append(current_span_id())
            conn.close()
            current.append(current_span_id())
            while await conn.read_message() is not None:
                pass
            return message

    assert run(scenario(), telemetry) == b"\x00binary push"
    push = telemetry.one("server-push")
    server_send = next(s for s in telemetry.named("send /chat") if parent_id(s) == span_id(push))
    client_receive = telemetry.one("receive /chat")
    assert parent_id(client_receive) == span_id(server_send)
    assert client_receive.attributes["websocket.message.type"] == "binary"
    assert client_receive.attributes["messaging.message.body.size"] == len(b"\x00binary push")
    assert current == [span_id(client_receive), 0], "current while handled, detached by close()"
    contract.no_open_spans(telemetry)


def test_on_message_callback_client(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """A client with on_message_callback gets bare payloads, each inside its receive span."""
    instrument(model="message", envelope="negotiate")
    got: list[Any] = []

    def on_message(message: str | bytes | None) -> None:
        got.append((message, current_span_id()))

    async def scenario() -> None:
        async with server(Echo) as url:
            conn = await websocket_connect(url, on_message_callback=on_message)
            for n, payload in enumerate(["one", b"two"], start=1):
                await conn.write_message(payload, binary=binary(payload))
                while len(got) < n:  # one reply per request
                    await asyncio.sleep(0.01)
            conn.close()
            while len(got) < 3:  # None: the connection closed
                await asyncio.sleep(0.01)

    run(scenario(), telemetry)
    client_hs = handshake(telemetry, SpanKind.CLIENT)
    receives = contract.messages(telemetry, "/chat", "receive", client_hs, ["text", "binary"])
    assert got == [("one", span_id(receives[0])), (b"two", span_id(receives[1])), (None, 0)]
    contract.no_open_spans(telemetry)


def test_read_message_stays_a_future(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """read_message still returns a future (asyncio.wait, result(), the callback form) with bare payloads."""
    instrument(envelope="negotiate")
    via_callback: list[Any] = []

    async def scenario() -> None:
        async with server(Echo) as url:
            conn = await websocket_connect(url)
            await conn.write_message("first")
            pending = conn.read_message()
            assert asyncio.isfuture(pending)
            done, _ = await asyncio.wait([pending], timeout=5)
            assert done == {pending} and pending.result() == "first"
            await conn.write_message("second")
            conn.read_message(callback=lambda future: via_callback.append(future.result()))
            while not via_callback:
                await asyncio.sleep(0.01)
            await until_closed(conn)

    run(scenario(), telemetry)
    assert via_callback == ["second"]
    assert len(telemetry.named("receive /chat")) == 4  # two on each side
    contract.no_open_spans(telemetry)


def test_payloads_survive_negotiated_envelope(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """Look-alike, empty, unicode, JSON and binary payloads arrive exactly as sent through the envelope."""
    instrument(envelope="negotiate")
    payloads: list[str | bytes] = [
        "",
        "\x1ewt1\x1e",
        "héllo ✓",
        '{"a":1}',
        b"",
        b"\x1ewt\x01\x00\x00x",
        bytes(range(256)),
    ]
    received: list[Any] = []

    class Handler(Echo):
        def on_message(self, message: str | bytes) -> None:
            received.append(message)
            super().on_message(message)

    async def scenario() -> list[Any]:
        async with server(Handler) as url:
            replies = await exchange(url, payloads)
            conn = await websocket_connect(url)
            await conn.write_message({"op": "dict"})  # tornado sends a dict as JSON text
            replies.append(await conn.read_message())
            await until_closed(conn)
            return replies

    assert run(scenario(), telemetry) == [*payloads, '{"op": "dict"}']
    assert received == [*payloads, '{"op": "dict"}']


# A websockets peer -------------------------------------------------------------------


@pytest.mark.parametrize("client", ["tornado", "websockets"])
def test_interop_with_instrumented_websockets(
    telemetry: Telemetry, instrument: Callable[..., None], client: str
) -> None:
    """tornado against an instrumented websockets peer, either side: envelope negotiated, the contract both ways."""
    instrument(model="message", envelope="negotiate")
    other = WebsocketsInstrumentor()
    other.instrument(tracer_provider=telemetry.provider, model="message", envelope="negotiate")
    payloads: list[str | bytes] = ["text", b"\x00binary", "\x1ewt1\x1elook-alike"]

    async def websockets_echo(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)

    async def scenario() -> list[Any]:
        if client == "tornado":
            async with websockets_serve(websockets_echo, "127.0.0.1", 0) as srv:
                return await exchange(f"ws://127.0.0.1:{srv.sockets[0].getsockname()[1]}/chat", payloads)
        async with server(Echo) as url, websockets_connect(url) as ws:
            replies = []
            for payload in payloads:
                await ws.send(payload)
                replies.append(await ws.recv())
            return replies

    try:
        assert run(scenario(), telemetry) == payloads
    finally:
        other.uninstrument()
    client_hs = contract.handshake(telemetry, "/chat", SpanKind.CLIENT)
    server_hs = contract.handshake(telemetry, "/chat", SpanKind.SERVER)
    assert parent_id(server_hs) == span_id(client_hs)
    assert server_hs.attributes["websocket.envelope"] == "frame"
    types = ["text", "binary", "text"]
    contract.continued(
        contract.messages(telemetry, "/chat", "send", client_hs, types),
        contract.messages(telemetry, "/chat", "receive", server_hs, types),
    )
    contract.continued(
        contract.messages(telemetry, "/chat", "send", server_hs, types),
        contract.messages(telemetry, "/chat", "receive", client_hs, types),
    )
    contract.no_open_spans(telemetry)


# Close, failures -------------------------------------------------------------------


def test_server_close_code_and_reason(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """A server's close(code, reason) lands on both close spans, with who started it."""
    instrument(model="message")
    closed_with: list[Any] = []

    class Closer(WebSocketHandler):
        def on_message(self, message: str | bytes) -> None:
            self.close(4001, "bye now")

    async def scenario() -> None:
        async with server(Closer) as url:
            conn = await websocket_connect(url)
            await conn.write_message("hi")
            assert await conn.read_message() is None
            closed_with.extend([conn.close_code, conn.close_reason])
            conn.close()  # tornado wants it even after the server closed

    run(scenario(), telemetry)
    assert closed_with == [4001, "bye now"]
    closes = {s.attributes["websocket.close.initiator"]: s for s in telemetry.named("close /chat")}
    assert set(closes) == {"local", "remote"}
    assert linked_to(closes["local"], handshake(telemetry, SpanKind.SERVER))
    for close in closes.values():
        assert close.attributes["websocket.close.code"] == 4001
        assert close.attributes["websocket.close.reason"] == "bye now"
        assert close.status.status_code is StatusCode.UNSET
    contract.no_open_spans(telemetry)


def test_client_close_code_and_reason(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """A client's close(code, reason) is seen by on_close and recorded on both sides; a bare close() is 1005."""
    instrument(model="connection")
    seen: list[Any] = []

    class Handler(WebSocketHandler):
        def on_close(self) -> None:
            seen.append((self.close_code, self.close_reason))

    async def scenario() -> None:
        async with server(Handler) as url:
            conn = await websocket_connect(url)
            conn.close(4002, "client done")
            assert await conn.read_message() is None
            conn = await websocket_connect(url)
            await until_closed(conn)  # close() without a code sends an empty close frame

    run(scenario(), telemetry)
    assert seen == [(4002, "client done"), (None, None)]
    connections = telemetry.named("websocket /chat")
    assert len(connections) == 4
    by_side = {(s.attributes["websocket.close.initiator"], s.attributes["websocket.close.code"]) for s in connections}
    assert by_side == {("local", 4002), ("remote", 4002), ("local", 1005), ("remote", 1005)}
    assert {s.attributes.get("websocket.close.reason") for s in connections} == {"client done", None}
    assert all(s.status.status_code is StatusCode.UNSET for s in connections)
    contract.no_open_spans(telemetry)


def test_dropped_tcp_connection_leaves_no_open_span(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """A peer that drops TCP while its message is being handled ends every span; the close is 1006, an error."""
    instrument(model="connection")
    handling = asyncio.Event()

    class Slow(WebSocketHandler):
        async def on_message(self, message: str | bytes) -> None:
            handling.set()
            await asyncio.sleep(0.2)  # still handling when the peer vanishes

    async def scenario() -> None:
        async with server(Slow) as url:
            conn = await websocket_connect(url)
            await conn.write_message("work")
            await handling.wait()
            conn.protocol.stream.close()  # no close frame: the socket just goes away
            assert await conn.read_message() is None
            conn.close()
            await asyncio.sleep(0.4)

    run(scenario(), telemetry)
    contract.no_open_spans(telemetry)
    server_hs = handshake(telemetry, SpanKind.SERVER)
    for connection in telemetry.named("websocket /chat"):
        assert connection.attributes["websocket.close.initiator"] == "none"
        assert connection.attributes["websocket.close.code"] == 1006
        assert connection.status.status_code is StatusCode.ERROR
    server_conn = next(s for s in telemetry.named("websocket /chat") if parent_id(s) == span_id(server_hs))
    server_receive = next(s for s in telemetry.named("receive /chat") if parent_id(s) == span_id(server_conn))
    assert server_receive.end_time <= server_conn.end_time


def test_on_message_exception_aborts_as_1006(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """tornado logs an exception from on_message and aborts: the receive span ends, the close is 1006."""
    instrument(model="message")

    class Broken(WebSocketHandler):
        def on_message(self, message: str | bytes) -> None:
            raise RuntimeError("handler bug")

    async def scenario() -> None:
        async with server(Broken) as url:
            conn = await websocket_connect(url)
            await conn.write_message("boom")
            assert await conn.read_message() is None
            conn.close()

    run(scenario(), telemetry)
    contract.no_open_spans(telemetry)
    server_hs = handshake(telemetry, SpanKind.SERVER)
    assert len([s for s in telemetry.named("receive /chat") if linked_to(s, server_hs)]) == 1
    server_close = next(s for s in telemetry.named("close /chat") if linked_to(s, server_hs))
    assert server_close.attributes["websocket.close.code"] == 1006
    assert server_close.attributes["websocket.close.initiator"] == "none"
    assert server_close.status.status_code is StatusCode.ERROR


def test_gen_coroutine_on_message_at_teardown_logs_nothing(
    telemetry: Telemetry, instrument: Callable[..., None], caplog: pytest.LogCaptureFixture
) -> None:
    """A ``@gen.coroutine`` on_message's Future is watched without a task of its own, which teardown would cancel.

    ``asyncio.run`` (and tornado's test teardown) cancels every task left: a task wrapped around the Future,
    cancelled after the Future finished, made tornado log a CancelledError as an uncaught exception and abort
    the connection (tornado's own ``test_websocket_close_buffered_data`` did). The teardown is made to come
    exactly then: the first callback of the Future cancels every other task.
    """
    instrument(model="message")
    done: list[Any] = []

    class GenEcho(WebSocketHandler):
        @gen.coroutine  # type: ignore[untyped-decorator]
        def reply(self, message: str | bytes) -> Any:
            yield self.write_message(message, binary=binary(message))

        def on_message(self, message: str | bytes) -> Any:
            future = self.reply(message)
            future.add_done_callback(teardown)
            return future

    def teardown(future: Any) -> None:
        done.append(future.result())
        for task in asyncio.all_tasks():
            if task is not main:
                task.cancel()

    async def scenario() -> None:
        async with server(GenEcho) as url:
            conn = await websocket_connect(url)
            await conn.write_message("hello")
            assert await conn.read_message() == "hello"
            await asyncio.sleep(0.05)
            conn.close()

    async def run_it() -> None:
        nonlocal main
        main = asyncio.current_task()
        await scenario()

    main: Any = None
    with caplog.at_level(logging.ERROR):
        asyncio.run(run_it())
    assert done == [None]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


@pytest.mark.parametrize(
    ("pattern", "route"),
    [(r"/chat/(\d+)", "/chat/{1}"), (r"/rooms/(?P<room>[a-z]+)/(?P<seat>\d+)$", "/rooms/{room}/{seat}")],
)
def test_route_template_names_the_spans(
    telemetry: Telemetry, instrument: Callable[..., None], pattern: str, route: str
) -> None:
    """Span names and ``http.route`` use the matched rule's template, not the path: one route for every room."""
    instrument()
    paths = ["/chat/123", "/chat/124"] if route.startswith("/chat") else ["/rooms/blue/1", "/rooms/red/2"]

    async def scenario() -> None:
        sockets = bind_sockets(0, "127.0.0.1")
        srv = HTTPServer(Application([(pattern, Echo)]))
        srv.add_sockets(sockets)
        port = sockets[0].getsockname()[1]
        try:
            for path in paths:
                assert await exchange(f"ws://127.0.0.1:{port}{path}", ["hi"]) == ["hi"]
        finally:
            srv.stop()

    run(scenario(), telemetry)
    servers = [s for s in telemetry.spans if s.kind is SpanKind.SERVER]
    assert [(s.name, s.attributes["http.route"], s.attributes["url.path"]) for s in servers] == [
        (f"GET {route}", route, path) for path in paths
    ]
    assert len(telemetry.named(f"receive {route}")) == 2
    assert len(telemetry.named(f"close {route}")) == 2


def test_a_pattern_without_a_template_gives_no_route(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """A pattern tornado cannot write back as a path names no route; the core's fallback applies."""
    instrument()

    async def scenario() -> None:
        sockets = bind_sockets(0, "127.0.0.1")
        srv = HTTPServer(Application([(r"/chat/(?:a|b)(\d)", Echo)]))
        srv.add_sockets(sockets)
        try:
            await exchange(f"ws://127.0.0.1:{sockets[0].getsockname()[1]}/chat/a1", ["hi"])
        finally:
            srv.stop()

    run(scenario(), telemetry)
    server = next(s for s in telemetry.spans if s.kind is SpanKind.SERVER)
    assert "{" not in server.attributes["http.route"]
    assert server.attributes["url.path"] == "/chat/a1"


def test_rejected_handshake_is_recorded(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """A 403 from check_origin ends both handshake spans with it; only the client's is an error."""
    instrument()

    class Strict(Echo):
        def check_origin(self, origin: str) -> bool:
            return False

    async def scenario() -> None:
        async with server(Strict) as url:
            request = HTTPRequest(url, headers={"Origin": "http://elsewhere.example"})
            with pytest.raises(HTTPClientError, match="403"):
                await websocket_connect(request)

    run(scenario(), telemetry)
    spans = {s.kind: s for s in telemetry.named("GET /chat")}
    assert spans[SpanKind.SERVER].attributes["http.response.status_code"] == 403
    assert spans[SpanKind.SERVER].status.status_code is StatusCode.UNSET  # 4xx is the client's fault
    assert spans[SpanKind.CLIENT].attributes["http.response.status_code"] == 403
    assert spans[SpanKind.CLIENT].status.status_code is StatusCode.ERROR
    contract.no_open_spans(telemetry)


def test_refused_connection_is_recorded(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """A client that cannot connect ends its handshake span as an error, with no HTTP status."""
    instrument()
    sockets = bind_sockets(0, "127.0.0.1")
    port = sockets[0].getsockname()[1]
    sockets[0].close()  # nothing listens there any more

    async def scenario() -> None:
        with pytest.raises(ConnectionRefusedError):
            await websocket_connect(f"ws://127.0.0.1:{port}/chat")

    run(scenario(), telemetry)
    client_hs = telemetry.one("GET /chat")
    assert client_hs.status.status_code is StatusCode.ERROR
    assert client_hs.attributes["error.type"] == "ConnectionRefusedError"
    assert "http.response.status_code" not in client_hs.attributes
    contract.no_open_spans(telemetry)


# Handshake details ---------------------------------------------------------------------


def test_connection_model_one_trace(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """In the connection model both handshakes, both connection spans and all message spans share one trace."""
    instrument(model="connection", envelope="off")
    tracer = telemetry.provider.get_tracer("test")
    in_open: list[int] = []

    class Handler(Echo):
        def open(self) -> None:
            in_open.append(current_span_id())

    async def scenario() -> None:
        async with server(Handler) as url:
            with tracer.start_as_current_span("client-op"):
                assert await exchange(url, ["a", "b"]) == ["a", "b"]

    run(scenario(), telemetry)
    root = telemetry.one("client-op")
    client_hs = handshake(telemetry, SpanKind.CLIENT)
    server_hs = handshake(telemetry, SpanKind.SERVER)
    assert parent_id(client_hs) == span_id(root)
    assert parent_id(server_hs) == span_id(client_hs)
    server_conn = next(s for s in telemetry.named("websocket /chat") if parent_id(s) == span_id(server_hs))
    assert in_open == [span_id(server_conn)], "open() runs inside the connection span"
    server_receives = [s for s in telemetry.named("receive /chat") if parent_id(s) == span_id(server_conn)]
    assert len(server_receives) == 2
    assert server_hs.end_time < server_receives[0].start_time  # the handshake span ends at 101
    assert len(telemetry.named("receive /chat")) == 4
    assert {trace_id(s) for s in telemetry.spans} == {trace_id(root)}
    assert server_conn.attributes["websocket.close.code"] == 1005
    contract.no_open_spans(telemetry)


def test_handshake_span_current_in_handler_hooks(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """check_origin and select_subprotocol run inside the server handshake span; open() (message model) does not."""
    instrument(model="message")
    inside: dict[str, int] = {}

    class Handler(Echo):
        def check_origin(self, origin: str) -> bool:
            inside["check_origin"] = current_span_id()
            return True

        def select_subprotocol(self, subprotocols: list[str]) -> str | None:
            inside["select_subprotocol"] = current_span_id()
            return None

        def open(self) -> None:
            inside["open"] = current_span_id()

    async def scenario() -> None:
        async with server(Handler) as url:
            conn = await websocket_connect(HTTPRequest(url, headers={"Origin": "http://elsewhere.example"}))
            await until_closed(conn)

    run(scenario(), telemetry)
    server_hs = handshake(telemetry, SpanKind.SERVER)
    assert inside == {"check_origin": span_id(server_hs), "select_subprotocol": span_id(server_hs), "open": 0}


def test_subprotocol_context_is_hidden_from_the_application(
    telemetry: Telemetry, instrument: Callable[..., None]
) -> None:
    """A wstrace.tp. subprotocol token parents the server handshake and never reaches select_subprotocol."""
    instrument(handshake_sources="subprotocol")
    trace_hex = "0af7651916cd43dd8448eb211c80319c"
    token = f"wstrace.tp.00-{trace_hex}-b7ad6b7169203331-01"
    offered: list[list[str]] = []
    selected: list[str | None] = []

    class Handler(Echo):
        def select_subprotocol(self, subprotocols: list[str]) -> str | None:
            offered.append(list(subprotocols))
            return subprotocols[0] if subprotocols else None

    async def scenario() -> None:
        async with server(Handler) as url:
            for protocols in ([token, "chat.v2"], [token]):
                conn = await websocket_connect(url, subprotocols=protocols)
                selected.append(conn.selected_subprotocol)
                await until_closed(conn)

    run(scenario(), telemetry)
    assert offered == [["chat.v2"], []]
    assert selected == ["chat.v2", token], "a browser that offered only our token gets it echoed"
    server_hs = [s for s in telemetry.named("GET /chat") if s.kind is SpanKind.SERVER]
    assert len(server_hs) == 2
    for span in server_hs:
        assert f"{trace_id(span):032x}" == trace_hex
        assert span.attributes["wstrace.context.source"] == "subprotocol"
    assert server_hs[0].attributes["websocket.subprotocol"] == "chat.v2"


# Zero code, and a light import ------------------------------------------------------------

APP = """
import asyncio
from tornado.httpserver import HTTPServer
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application
from tornado.web import Application
from tornado.websocket import WebSocketHandler, websocket_connect

class Echo(WebSocketHandler):
    def on_message(self, message):
        self.write_message(message, binary=isinstance(message, bytes))

async def main():
    sockets = bind_sockets(0, "127.0.0.1")
    server = HTTPServer(Application([("/chat", Echo)]))
    server.add_sockets(sockets)
    conn = await websocket_connect(f"ws://127.0.0.1:{sockets[0].getsockname()[1]}/chat")
    for payload in ("hello", b"bytes"):
        await conn.write_message(payload, binary=isinstance(payload, bytes))
        print("echo:", await conn.read_message())
    conn.close()
    while await conn.read_message() is not None:
        pass
    await asyncio.sleep(0.1)
    server.stop()

asyncio.run(main())
"""


def test_zero_code_instrumentation() -> None:
    """Under opentelemetry-instrument an unchanged tornado app is traced end to end (entry point wstrace-tornado)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WSTRACE_", "OTEL_"))}
    others = "wstrace-websockets,wstrace-aiohttp,wstrace-starlette,wstrace-websocket-client"
    env.update(
        OTEL_TRACES_EXPORTER="console",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
        WSTRACE_ROUTES="/chat",  # the clients (and websockets) have no router: name the app's route
        OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=f"asyncio,threading,{others}",
    )
    result = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "opentelemetry-instrument"), sys.executable, "-c", APP],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "echo: hello" in result.stdout and "echo: b'bytes'" in result.stdout
    spans = console_spans(result.stdout)
    by_id = {s["context"]["span_id"]: s for s in spans}
    assert sorted(s["kind"] for s in spans if s["name"] == "GET /chat") == ["SpanKind.CLIENT", "SpanKind.SERVER"]
    assert {s["attributes"]["websocket.envelope"] for s in spans if s["name"] == "GET /chat"} == {"frame"}
    receives = [s for s in spans if s["name"] == "receive /chat"]
    assert len(receives) == 4
    assert all(by_id[r["parent_id"]]["name"] == "send /chat" for r in receives), "each continues its sender"


def test_import_loads_no_tornado() -> None:
    """Importing the adapter loads neither tornado nor the OpenTelemetry SDK."""
    code = "import sys, wstrace.instrumentation.tornado; print(' '.join(sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert "wstrace.instrumentation.tornado._connection" in loaded
    assert not [m for m in loaded if m.split(".")[0] == "tornado" or m.startswith("opentelemetry.sdk")]
