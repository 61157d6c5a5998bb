"""The websocket-client adapter against a real loopback websockets server (instrumented) and a bare peer.

websocket-client has no server, so its peer is the websockets asyncio server,
instrumented by WebsocketsInstrumentor with the same tracer provider and run in
a background thread with its own event loop: propagation is checked both ways.
"""

from __future__ import annotations

import asyncio
import os
import selectors
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any
from unittest import mock

import pytest
import websocket
import websocket._app
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode
from websocket import ABNF, WebSocketApp, WebSocketBadStatusException, WebSocketConnectionClosedException
from websockets.asyncio.server import ServerConnection

from tests.conftest import Telemetry
from tests.console import console_spans
from tests.instrumentation import contract
from tests.instrumentation.contract import linked_to, parent_id, side, span_id, trace_id
from tests.instrumentation.thread_server import ws_server
from wstrace.instrumentation.websocket_client import WebsocketClientInstrumentor
from wstrace.instrumentation.websockets import WebsocketsInstrumentor


Handler = Callable[[ServerConnection], Awaitable[None]]
WSTRACE_HEADERS = ("traceparent", "wstrace-envelope", "wstrace-session")


@pytest.fixture
def instrument(telemetry: Telemetry) -> Iterator[Callable[..., None]]:
    """Instrument websocket-client and the websockets server peer with the same options and provider."""
    client = WebsocketClientInstrumentor()
    server = WebsocketsInstrumentor()

    def do(**options: Any) -> None:
        options.setdefault("tracer_provider", telemetry.provider)
        server.instrument(**options)
        client.instrument(**options)

    yield do
    client.uninstrument()
    server.uninstrument()


async def echo(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


def run_app(app: WebSocketApp, **options: Any) -> None:
    """Run ``app.run_forever`` in its own thread (as applications do), failing instead of hanging."""
    thread = threading.Thread(target=app.run_forever, kwargs=options, daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "run_forever did not return"


def wait_until_closed(telemetry: Telemetry) -> None:
    """The server thread records its side of a close a moment after the client returns."""
    for _ in range(100):
        if not telemetry.open_spans.names():
            return
        time.sleep(0.02)


def check_contract(telemetry: Telemetry, types: list[str]) -> tuple[list[ReadableSpan], list[ReadableSpan]]:
    """Both directions of the shared span contract; returns the client's sends and receives."""
    client_hs = contract.handshake(telemetry, "/chat", SpanKind.CLIENT)
    server_hs = contract.handshake(telemetry, "/chat", SpanKind.SERVER)
    assert client_hs.attributes["websocket.envelope"] == server_hs.attributes["websocket.envelope"] == "frame"
    client_sends = contract.messages(telemetry, "/chat", "send", client_hs, types)
    server_receives = contract.messages(telemetry, "/chat", "receive", server_hs, types)
    server_sends = contract.messages(telemetry, "/chat", "send", server_hs, types)
    client_receives = contract.messages(telemetry, "/chat", "receive", client_hs, types)
    contract.continued(client_sends, server_receives)  # client send -> server receive
    contract.continued(server_sends, client_receives)  # server send -> client receive
    contract.no_open_spans(telemetry)
    return client_sends, client_receives


# The shared contract, both ways ------------------------------------------------


def test_contract_create_connection(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """create_connection against the instrumented websockets server: text and binary, both directions."""
    instrument(model="message", envelope="negotiate")
    seen: list[Any] = []

    async def handler(ws: ServerConnection) -> None:
        async for message in ws:
            seen.append(message)
            await ws.send(message)

    with ws_server(handler) as url:
        ws = websocket.create_connection(url, timeout=5)
        ws.send("text")
        assert ws.recv() == "text"
        ws.send_binary(b"\x00binary")
        assert ws.recv() == b"\x00binary"
        ws.close()
        assert trace.get_current_span() is trace.INVALID_SPAN, "no receive span is left current after close"
    assert seen == ["text", b"\x00binary"], "the server application sees the bare payloads"
    check_contract(telemetry, ["text", "binary"])


def test_contract_websocket_app(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """WebSocketApp: on_message gets the stripped payload with its receive span current."""
    instrument(model="message", envelope="negotiate")
    got: list[tuple[Any, int]] = []
    after: list[Any] = []

    def on_open(app: WebSocketApp) -> None:
        app.send("text")

    def on_message(app: WebSocketApp, message: Any) -> None:
        got.append((message, trace.get_current_span().get_span_context().span_id))
        if len(got) == 1:
            app.send_bytes(b"\x00binary")  # a reply, sent while the first message is handled
        else:
            app.close()

    def on_close(app: WebSocketApp, code: Any, reason: Any) -> None:
        after.append(trace.get_current_span())

    with ws_server(echo) as url:
        run_app(WebSocketApp(url, on_open=on_open, on_message=on_message, on_close=on_close))
    assert [message for message, _ in got] == ["text", b"\x00binary"]
    client_sends, client_receives = check_contract(telemetry, ["text", "binary"])
    assert [current for _, current in got] == [span_id(s) for s in client_receives]
    # Sent while the reply to "text" is handled, "binary" is the client's next request: a trace of its own,
    # linked to the exchange before it.
    assert client_sends[1].parent is None
    assert [lk.context.span_id for lk in client_sends[1].links if lk.attributes["wstrace.link.kind"] == "previous"] == [
        span_id(client_receives[0])
    ]
    assert after == [trace.INVALID_SPAN], "on_close runs with no receive span current"


class SelectDispatcher:
    """A custom dispatcher (``run_forever(dispatcher=...)``): a select loop that keeps the callbacks it is given."""

    def __init__(self) -> None:
        self.callbacks: list[Callable[[], bool]] = []

    def signal(self, sig: int, handler: Callable[..., Any]) -> None:
        pass

    def abort(self) -> None:
        pass

    def timeout(self, seconds: float, callback: Callable[..., Any], *args: Any) -> None:
        pass

    def buffwrite(self, sock: Any, data: Any, send: Callable[[Any, Any], int], disconnect: Any) -> None:
        send(sock, data)

    def read(self, sock: Any, callback: Callable[[], bool]) -> None:
        self.callbacks.append(callback)
        with selectors.DefaultSelector() as selector:
            selector.register(sock, selectors.EVENT_READ)
            while selector.select(5) and callback():
                pass


def test_custom_dispatcher_gets_the_applications_callback(
    telemetry: Telemetry, instrument: Callable[..., None]
) -> None:
    """A custom dispatcher is the application's: it gets websocket-client's own read callback, not a wrapper."""
    instrument(model="message", envelope="negotiate")
    dispatcher = SelectDispatcher()
    got: list[Any] = []

    def on_message(app: WebSocketApp, message: Any) -> None:
        got.append(message)
        app.close()

    with ws_server(echo) as url:
        app = WebSocketApp(url, on_open=lambda app: app.send("hi"), on_message=on_message)
        run_app(app, dispatcher=dispatcher)
    assert got == ["hi"]
    assert [(c.__module__, c.__name__) for c in dispatcher.callbacks] == [("websocket._app", "read")]
    wait_until_closed(telemetry)
    client_hs = contract.handshake(telemetry, "/chat", SpanKind.CLIENT)
    contract.messages(telemetry, "/chat", "receive", client_hs, ["text"])
    contract.no_open_spans(telemetry)


def test_only_a_connection_tracer_makes_a_connection_traced(instrument: Callable[..., None]) -> None:
    """An object that answers every attribute (a Mock standing in for an application's WebSocketApp) is not traced.

    The library's own Dispatcher, given such an application, runs its read step untouched.
    """
    instrument()
    app = mock.Mock()
    left, right = socket.socketpair()
    with left, right:
        app.sock.sock = left
        right.send(b"x")  # readable: the dispatcher calls the read step once
        read = mock.Mock(return_value=False)
        websocket._app.Dispatcher(app, 1).read(left, read, mock.Mock())
    read.assert_called_once_with()
    app.sock._wstrace.receive_done.assert_not_called()


def test_app_receive_span_measures_handling_not_waiting(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """In WebSocketApp a receive span ends when on_message returns, not when the next frame arrives."""
    instrument(model="message", envelope="negotiate")
    tracer = telemetry.provider.get_tracer("test")

    async def handler(ws: ServerConnection) -> None:
        await ws.send("one")
        await asyncio.sleep(0.5)  # the client is idle meanwhile
        await ws.send("two")
        await ws.wait_closed()

    def on_message(app: WebSocketApp, message: Any) -> None:
        with tracer.start_as_current_span(f"handle {message}"):
            time.sleep(0.05)
        if message == "two":
            app.close()

    with ws_server(handler) as url:
        run_app(WebSocketApp(url, on_message=on_message))
    client_hs = side(telemetry, SpanKind.CLIENT)
    receives = [s for s in telemetry.named("receive /chat") if linked_to(s, client_hs)]
    # The server's two pushes are one run: its first message on a span of its own, then one stream.
    (stream,) = [s for s in receives if "wstrace.stream.chunk_count" in s.attributes]
    (single,) = [s for s in receives if s is not stream]
    assert parent_id(telemetry.one("handle one")) == span_id(single), "work done in on_message is its child"
    duration = (single.end_time - single.start_time) / 1e9
    assert 0.05 <= duration < 0.3, f"receive span lasted {duration:.3f}s: handling, not waiting"
    assert parent_id(telemetry.one("handle two")) == span_id(stream)
    assert stream.attributes["wstrace.stream.chunk_count"] == 2
    contract.no_open_spans(telemetry)


# Handshake headers ---------------------------------------------------------------


def _recording(seen: list[dict[str, list[str]]]) -> Any:
    """A ``process_request`` that notes the upgrade request's headers as they arrived (once the connection is
    open, an instrumented websockets server has dropped wstrace's own from ``ws.request``)."""

    def process_request(ws: ServerConnection, request: Any) -> None:
        headers = request.headers
        seen.append({name.lower(): headers.get_all(name) for name in headers})

    return process_request


def test_header_list_and_dict_are_merged_not_clobbered(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """WebSocket().connect(header=list) and create_connection(header=dict) keep the caller's headers; theirs win."""
    instrument(envelope="negotiate")
    seen: list[dict[str, list[str]]] = []
    as_list = ["X-Custom: one"]
    own_traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    as_dict = {"X-Custom": "two", "Traceparent": own_traceparent}

    with ws_server(echo, process_request=_recording(seen)) as url:
        ws = websocket.WebSocket()
        ws.connect(url, header=as_list, timeout=5)
        ws.send("a")
        assert ws.recv() == "a"
        ws.close()
        ws = websocket.create_connection(url, header=as_dict, timeout=5)
        ws.close()
    assert as_list == ["X-Custom: one"] and len(as_dict) == 2, "the caller's objects are not modified"
    first, second = seen
    assert first["x-custom"] == ["one"]
    assert all(len(first[name]) == 1 for name in WSTRACE_HEADERS)
    client_hs = min((s for s in telemetry.named("GET /chat") if s.kind is SpanKind.CLIENT), key=lambda s: s.start_time)
    assert first["traceparent"][0].split("-")[1] == f"{trace_id(client_hs):032x}"
    assert second["x-custom"] == ["two"]
    assert second["traceparent"] == [own_traceparent], "a header the caller set wins"
    assert second["wstrace-envelope"] == ["frame/1"]


def test_app_header_callable(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """A WebSocketApp header callable still sends its headers, and ours join them."""
    instrument(envelope="negotiate")
    seen: list[dict[str, list[str]]] = []

    def on_open(app: WebSocketApp) -> None:
        app.close()

    with ws_server(echo, process_request=_recording(seen)) as url:
        run_app(WebSocketApp(url, header=lambda: ["X-Token: abc"], on_open=on_open))
    assert seen[0]["x-token"] == ["abc"]
    assert seen[0]["wstrace-envelope"] == ["frame/1"]
    client_hs = side(telemetry, SpanKind.CLIENT)
    assert seen[0]["traceparent"][0].split("-")[1] == f"{trace_id(client_hs):032x}"
    assert parent_id(side(telemetry, SpanKind.SERVER)) == span_id(client_hs)


def test_rejected_handshake_is_recorded(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """A handshake the server rejects ends the client span with the status, as an error."""
    instrument()

    def reject(connection: ServerConnection, request: Any) -> Any:
        return connection.respond(403, "no")

    with ws_server(echo, process_request=reject) as url, pytest.raises(WebSocketBadStatusException):
        websocket.create_connection(url, timeout=5)
    client_hs = side(telemetry, SpanKind.CLIENT)
    assert client_hs.attributes["http.response.status_code"] == 403
    assert client_hs.status.status_code is StatusCode.ERROR
    contract.no_open_spans(telemetry)


# Frame types and send paths ---------------------------------------------------------


def test_every_send_path_keeps_its_frame_type(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """send/send_text/send_bytes/send_binary/send_frame all get the envelope and the right frame type."""
    instrument(model="message", envelope="negotiate")
    received: list[Any] = []

    async def handler(ws: ServerConnection) -> None:
        async for message in ws:
            received.append(message)
        await ws.wait_closed()

    with ws_server(handler) as url:
        ws = websocket.create_connection(url, timeout=5)
        ws.send("plain")
        ws.send_text("héllo ✓")
        ws.send_bytes(b"\x01bytes")
        ws.send_binary(bytearray(b"\x02binary"))
        ws.send(b"\x1ewt\x01\x00\x00look-alike", opcode=ABNF.OPCODE_BINARY)
        first = ABNF.create_frame("frag", ABNF.OPCODE_TEXT, fin=0)
        ws.send_frame(first)
        ws.send_frame(ABNF.create_frame("mented", ABNF.OPCODE_CONT, fin=1))
        ws.send_frame(first)  # the same frame object again: it was not altered
        ws.send_frame(ABNF.create_frame("!", ABNF.OPCODE_CONT, fin=1))
        ws.ping("ping")
        ws.close()
    assert received == [
        "plain",
        "héllo ✓",
        b"\x01bytes",
        b"\x02binary",
        b"\x1ewt\x01\x00\x00look-alike",
        "fragmented",
        "frag!",
    ]
    # Seven messages in a row with no context of the client's own: one run, one send span with seven chunks
    # (a fragmented message counts once, with all its frames). The server receives the first on its own span,
    # then the run as one receive stream; both continue it.
    (run,) = [s for s in telemetry.named("send /chat") if s.kind is SpanKind.PRODUCER]
    assert run.attributes["wstrace.stream.chunk_count"] == 7
    assert run.attributes["websocket.message.type"] == "text"  # its first chunk's
    server_hs = side(telemetry, SpanKind.SERVER)
    receives = [s for s in telemetry.named("receive /chat") if linked_to(s, server_hs)]
    assert len(receives) == 2 and all(s.attributes["websocket.message.type"] == "text" for s in receives)
    (stream,) = [s for s in receives if "wstrace.stream.chunk_count" in s.attributes]
    assert {parent_id(r) for r in receives} == {span_id(run)}
    assert stream.attributes["wstrace.stream.chunk_count"] == 7
    assert run.attributes["wstrace.stream.size"] == stream.attributes["wstrace.stream.size"]  # all of each message
    contract.no_open_spans(telemetry)


def test_receive_paths_strip_the_envelope(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """recv() returns str for text and bytes for binary; recv_data and iteration are stripped too."""
    instrument(model="message", envelope="negotiate")
    pushed: list[str | bytes] = ["héllo ✓", b"\x00\xffbin", "\x1ewt1\x1e", b"", "last"]

    async def handler(ws: ServerConnection) -> None:
        for message in pushed:
            await ws.send(message)
        await ws.wait_closed()

    with ws_server(handler) as url:
        ws = websocket.create_connection(url, timeout=5)
        assert ws.recv() == "héllo ✓"
        assert ws.recv() == b"\x00\xffbin"
        assert ws.recv_data() == (ABNF.OPCODE_TEXT, b"\x1ewt1\x1e")
        opcode, frame = ws.recv_data_frame()
        assert (opcode, frame.data) == (ABNF.OPCODE_BINARY, b"")
        assert next(iter(ws)) == "last"
        ws.close()
    # The server's five pushes are one run; the client receives the first on its own span (nothing told it yet
    # that more would follow), then the run as one receive stream of all five.
    client_hs = side(telemetry, SpanKind.CLIENT)
    receives = [s for s in telemetry.named("receive /chat") if linked_to(s, client_hs)]
    assert len(receives) == 2
    (stream,) = [s for s in receives if "wstrace.stream.chunk_count" in s.attributes]
    (first,) = [s for s in receives if s is not stream]
    assert first.attributes["messaging.message.body.size"] == len("héllo ✓".encode())
    assert stream.attributes["wstrace.stream.chunk_count"] == len(pushed)
    assert stream.attributes["messaging.message.body.size"] == sum(
        len(p.encode() if isinstance(p, str) else p) for p in pushed
    )
    contract.no_open_spans(telemetry)


# Close and connection loss -----------------------------------------------------------------


def test_close_codes_and_reasons(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """A server close (4001) and a client close (4002) record code, reason and initiator on both sides."""
    instrument(model="message")

    async def handler(ws: ServerConnection) -> None:
        if await ws.recv() == "close please":
            await ws.close(4001, "bye now")
        else:
            await ws.wait_closed()

    with ws_server(handler, "/remote") as url:
        ws = websocket.create_connection(url, timeout=5)
        ws.send("close please")
        assert ws.recv() == ""  # how websocket-client reports a close frame to recv()
        ws.close()  # a no-op on a connection closed by the peer: recorded once
        ws.shutdown()  # close() left the socket open; shutdown() after a close records nothing more
    with ws_server(handler, "/local") as url:
        ws = websocket.create_connection(url, timeout=5)
        ws.send("stay")
        ws.close(status=4002, reason=b"done")
    wait_until_closed(telemetry)
    for route, code, reason, client_initiator, server_initiator in (
        ("/remote", 4001, "bye now", "remote", "local"),
        ("/local", 4002, "done", "local", "remote"),
    ):
        client_hs = side(telemetry, SpanKind.CLIENT, route)
        closes = telemetry.named(f"close {route}")
        assert len(closes) == 2
        client_close = next(s for s in closes if linked_to(s, client_hs))
        server_close = next(s for s in closes if s is not client_close)
        assert client_close.attributes["websocket.close.initiator"] == client_initiator
        assert server_close.attributes["websocket.close.initiator"] == server_initiator
        for close in (client_close, server_close):
            assert close.attributes["websocket.close.code"] == code
            assert close.attributes["websocket.close.reason"] == reason
            assert close.status.status_code is StatusCode.UNSET
    contract.no_open_spans(telemetry)


def test_close_from_another_thread_while_a_message_is_handled(
    telemetry: Telemetry, instrument: Callable[..., None]
) -> None:
    """close() from the main thread ends the reader's receive span; the reader detaches it itself."""
    instrument(model="message", envelope="negotiate")
    handling, closed = threading.Event(), threading.Event()
    seen: list[Any] = []

    def reader(ws: websocket.WebSocket) -> None:
        seen.append(ws.recv())
        receive_span = trace.get_current_span()
        handling.set()
        closed.wait(5)
        seen.append(trace.get_current_span() is receive_span)  # close() elsewhere did not touch our context
        try:
            ws.recv()
        except WebSocketConnectionClosedException:
            seen.append("closed")
        seen.append(trace.get_current_span() is trace.INVALID_SPAN)

    with ws_server(echo) as url:
        ws = websocket.create_connection(url, timeout=5)
        thread = threading.Thread(target=reader, args=(ws,), daemon=True)
        thread.start()
        ws.send("work")
        assert handling.wait(5)
        ws.close()
        closed.set()
        thread.join(5)
    assert seen == ["work", True, "closed", True]
    wait_until_closed(telemetry)
    contract.no_open_spans(telemetry)
    client_hs = side(telemetry, SpanKind.CLIENT)
    client_close = next(s for s in telemetry.named("close /chat") if linked_to(s, client_hs))
    assert client_close.attributes["websocket.close.initiator"] == "local"
    assert client_close.attributes["websocket.close.code"] == 1000
    (client_receive,) = [s for s in telemetry.named("receive /chat") if linked_to(s, client_hs)]
    assert client_receive.status.status_code is StatusCode.UNSET


def test_app_server_close_reaches_on_close_and_span(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """WebSocketApp: the server's close code and reason reach on_close and the close span alike."""
    instrument(model="message")
    closed_with: list[Any] = []

    async def handler(ws: ServerConnection) -> None:
        await ws.close(4003, "go away")

    sockets: list[websocket.WebSocket] = []

    with ws_server(handler) as url:
        app = WebSocketApp(
            url,
            on_open=lambda app: sockets.append(app.sock),
            on_close=lambda app, code, reason: closed_with.append((code, reason)),
        )
        run_app(app)
        # websocket-client leaves the TCP socket open after a server-initiated
        # close (its close() is a no-op then); close it as the server waits for it.
        sockets[0].shutdown()
    assert closed_with == [(4003, "go away")]
    client_close = next(s for s in telemetry.named("close /chat") if linked_to(s, side(telemetry, SpanKind.CLIENT)))
    assert client_close.attributes["websocket.close.code"] == 4003
    assert client_close.attributes["websocket.close.reason"] == "go away"
    assert client_close.attributes["websocket.close.initiator"] == "remote"
    contract.no_open_spans(telemetry)


def _dropping_server() -> Handler:
    async def handler(ws: ServerConnection) -> None:
        await ws.send("last words")
        await ws.recv()
        ws.transport.abort()  # TCP gone, no close frame

    return handler


def test_server_dropping_tcp_leaves_no_open_span(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """A server that drops TCP mid-connection: recv raises, the connection span records 1006 as an error."""
    instrument(model="connection")

    with ws_server(_dropping_server()) as url:
        ws = websocket.create_connection(url, timeout=5)
        assert ws.recv() == "last words"
        ws.send("now drop")
        with pytest.raises((WebSocketConnectionClosedException, ConnectionResetError)):
            ws.recv()
        ws.close()  # after a drop, close() must not record a second ending
    assert trace.get_current_span() is trace.INVALID_SPAN
    wait_until_closed(telemetry)
    contract.no_open_spans(telemetry)
    client_hs = side(telemetry, SpanKind.CLIENT)
    client_conn = next(s for s in telemetry.named("websocket /chat") if parent_id(s) == span_id(client_hs))
    assert client_conn.attributes["websocket.close.code"] == 1006
    assert client_conn.attributes["websocket.close.initiator"] == "none"
    assert client_conn.status.status_code is StatusCode.ERROR


def test_app_server_dropping_tcp_leaves_no_open_span(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """The same drop seen by WebSocketApp: on_error is called and every span has ended."""
    instrument(model="connection")
    errors: list[Any] = []

    with ws_server(_dropping_server()) as url:
        app = WebSocketApp(
            url, on_message=lambda app, message: app.send("now drop"), on_error=lambda app, e: errors.append(e)
        )
        run_app(app)
    assert errors and isinstance(errors[0], (WebSocketConnectionClosedException, ConnectionResetError))
    wait_until_closed(telemetry)
    contract.no_open_spans(telemetry)
    client_hs = side(telemetry, SpanKind.CLIENT)
    client_conn = next(s for s in telemetry.named("websocket /chat") if parent_id(s) == span_id(client_hs))
    assert client_conn.attributes["websocket.close.code"] == 1006
    assert client_conn.status.status_code is StatusCode.ERROR


# Models ------------------------------------------------------------------------------------


def test_connection_model_one_trace(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """In the connection model every span of the connection, client and server, is in one trace."""
    instrument(model="connection", envelope="negotiate")
    tracer = telemetry.provider.get_tracer("test")

    with ws_server(echo) as url:
        with tracer.start_as_current_span("client-op"):
            ws = websocket.create_connection(url, timeout=5)
            for payload in ("a", b"b"):
                ws.send(payload, opcode=ABNF.OPCODE_TEXT if isinstance(payload, str) else ABNF.OPCODE_BINARY)
                assert ws.recv() == payload
            ws.close()
    wait_until_closed(telemetry)
    root = telemetry.one("client-op")
    client_hs, server_hs = side(telemetry, SpanKind.CLIENT), side(telemetry, SpanKind.SERVER)
    assert parent_id(client_hs) == span_id(root)
    assert parent_id(server_hs) == span_id(client_hs)
    client_conn = next(s for s in telemetry.named("websocket /chat") if parent_id(s) == span_id(client_hs))
    client_receives = [s for s in telemetry.named("receive /chat") if parent_id(s) == span_id(client_conn)]
    assert len(client_receives) == 2
    assert len(telemetry.named("send /chat")) == len(telemetry.named("receive /chat")) == 4
    assert {trace_id(s) for s in telemetry.spans} == {trace_id(root)}
    assert client_conn.attributes["websocket.close.code"] == 1000
    assert client_conn.attributes["websocket.close.initiator"] == "local"
    contract.no_open_spans(telemetry)


# Instrumenting late (the standard instrumentor contract is in test_instrumentors.py) ---------------


def test_connection_opened_before_instrument_passes_through(
    telemetry: Telemetry, instrument: Callable[..., None]
) -> None:
    """A WebSocket connected before instrument() keeps working and is not traced."""
    with ws_server(echo) as url:
        ws = websocket.create_connection(url, timeout=5)
        instrument()
        ws.send("x")
        assert ws.recv() == "x"
        ws.close()
    assert telemetry.spans == []


def test_importing_the_adapter_does_not_import_the_library() -> None:
    """opentelemetry-instrument loads every entry point: the adapter module must not import websocket."""
    code = "import sys, wstrace.instrumentation.websocket_client; print('websocket' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


ZERO_CODE_APP = """
import threading
import websocket
from websockets.sync.server import serve

def echo(ws):
    for message in ws:
        ws.send(message)

with serve(echo, "127.0.0.1", 0) as srv:
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    ws = websocket.create_connection(f"ws://127.0.0.1:{srv.socket.getsockname()[1]}/zero", timeout=5)
    ws.send("hi")
    print("reply:", ws.recv())
    ws.close()
    srv.shutdown()
"""


def test_zero_code_instrumentation() -> None:
    """Under opentelemetry-instrument the entry point traces websocket-client with no code change."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WSTRACE_", "OTEL_"))}
    env.update(
        OTEL_TRACES_EXPORTER="console",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
        WSTRACE_ROUTES="/zero",  # the clients (and websockets) have no router: name the app's route
        # Only this adapter and its peer's: the test is about this entry point.
        OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="asyncio,threading,wstrace-aiohttp,wstrace-starlette,wstrace-tornado",
    )
    instrument = os.path.join(os.path.dirname(sys.executable), "opentelemetry-instrument")
    result = subprocess.run(
        [instrument, sys.executable, "-c", ZERO_CODE_APP], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "reply: hi" in result.stdout
    spans = console_spans(result.stdout)
    client_hs = next(s for s in spans if s["name"] == "GET /zero" and s["kind"] == "SpanKind.CLIENT")
    assert client_hs["attributes"]["websocket.envelope"] == "frame"
    client_send = next(s for s in spans if s["name"] == "send /zero" and s["kind"] == "SpanKind.PRODUCER")
    server_receive = next(
        s for s in spans if s["name"] == "receive /zero" and s["parent_id"] == client_send["context"]["span_id"]
    )
    assert server_receive["context"]["trace_id"] == client_send["context"]["trace_id"]


def test_malformed_url_fails_as_the_library_does_and_is_recorded(
    telemetry: Telemetry, instrument: Callable[..., None]
) -> None:
    """A URL that does not parse raises the library's own error; its handshake span records the failure."""
    instrument()
    with pytest.raises(ValueError):
        websocket.create_connection("ws://[::1/chat", timeout=1)
    (span,) = telemetry.spans
    assert span.kind is SpanKind.CLIENT
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == "ValueError"
    assert telemetry.open_spans.names() == []
