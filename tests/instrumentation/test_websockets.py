"""The websockets adapter against real loopback clients and servers (asyncio and sync)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
from opentelemetry.trace import SpanKind, StatusCode
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as sync_connect
from websockets.sync.server import serve as sync_serve

from tests.conftest import Telemetry
from tests.instrumentation.contract import linked_to, parent_id, span_id, trace_id
from tests.reliability.rawws import RawClient, frame
from wstrace.instrumentation.websockets import WebsocketsInstrumentor


Handler = Callable[[ServerConnection], Awaitable[None]]


@pytest.fixture
def instrument(telemetry: Telemetry) -> Iterator[Callable[..., None]]:
    instrumentor = WebsocketsInstrumentor()

    def do(**options: Any) -> None:
        options.setdefault("tracer_provider", telemetry.provider)
        instrumentor.instrument(**options)

    yield do
    instrumentor.uninstrument()


@asynccontextmanager
async def server(handler: Handler) -> AsyncIterator[str]:
    async with serve(handler, "127.0.0.1", 0) as srv:
        yield f"ws://127.0.0.1:{srv.sockets[0].getsockname()[1]}/chat"


async def echo(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


def run(coro: Awaitable[Any]) -> Any:
    async def main() -> Any:
        result = await coro
        await asyncio.sleep(0.05)  # let connection_lost callbacks run
        return result

    return asyncio.run(main())


async def exchange(url: str, payloads: list[str | bytes]) -> list[Any]:
    """Send each payload and collect the reply to it."""
    async with connect(url) as ws:
        replies = []
        for payload in payloads:
            await ws.send(payload)
            replies.append(await ws.recv())
        return replies


# Models ----------------------------------------------------------------------


def test_connection_model_one_trace(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """In the connection model the client span, both handshakes and all message spans share one trace."""
    instrument(model="connection", envelope="off")
    tracer = telemetry.provider.get_tracer("test")

    async def scenario() -> None:
        async with server(echo) as url:
            with tracer.start_as_current_span("client-op"):
                async with connect(url) as ws:
                    for text in ("a", "b"):
                        await ws.send(text)
                        assert await ws.recv() == text

    run(scenario())
    root = telemetry.one("client-op")
    assert len(telemetry.named("GET /chat")) == 2
    server_hs = next(s for s in telemetry.named("GET /chat") if s.kind is SpanKind.SERVER)
    client_hs = next(s for s in telemetry.named("GET /chat") if s.kind is SpanKind.CLIENT)
    connections = telemetry.named("websocket /chat")
    assert len(connections) == 2
    server_conn = next(s for s in connections if parent_id(s) == span_id(server_hs))
    assert parent_id(client_hs) == span_id(root)
    assert parent_id(server_hs) == span_id(client_hs)
    receives = [s for s in telemetry.named("receive /chat") if trace_id(s) == trace_id(root)]
    assert len(receives) == 4  # two on each side
    server_receives = [s for s in receives if parent_id(s) == span_id(server_conn)]
    assert len(server_receives) == 2
    assert {trace_id(s) for s in telemetry.spans} == {trace_id(root)}
    assert server_hs.attributes["http.response.status_code"] == 101
    assert server_hs.end_time < server_receives[0].start_time  # the handshake span ends at 101
    assert server_conn.attributes["websocket.close.code"] == 1000


def test_message_model_each_message_its_own_trace(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """In the message model each inbound message is a root linked to the handshake, tagged with the session id."""
    instrument(model="message", envelope="off")

    async def scenario() -> None:
        async with server(echo) as url, connect(url) as ws:
            for text in ("a", "b", "c"):
                await ws.send(text)
                await ws.recv()

    run(scenario())
    server_hs = next(s for s in telemetry.named("GET /chat") if s.kind is SpanKind.SERVER)
    session = server_hs.attributes["websocket.session.id"]
    server_receives = [s for s in telemetry.named("receive /chat") if linked_to(s, server_hs)]
    assert len(server_receives) == 3
    assert len({trace_id(s) for s in server_receives} | {trace_id(server_hs)}) == 4
    for receive in server_receives:
        assert receive.parent is None
        assert receive.kind is SpanKind.CONSUMER
        assert receive.attributes["websocket.session.id"] == session
        replies = [s for s in telemetry.named("send /chat") if parent_id(s) == span_id(receive)]
        assert len(replies) == 1, "the echo is a child of the message it answers"
    assert [r.attributes["websocket.message.ordinal"] for r in server_receives] == [1, 2, 3]
    client_hs = next(s for s in telemetry.named("GET /chat") if s.kind is SpanKind.CLIENT)
    assert client_hs.attributes["websocket.session.id"] == session, "both ends share the session id"


# Envelope propagation ---------------------------------------------------------


def test_envelope_carries_client_send_to_server_receive(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """A client send inside a client span continues on the server's receive span."""
    instrument(model="message", envelope="negotiate")
    tracer = telemetry.provider.get_tracer("test")
    seen: list[Any] = []

    async def handler(ws: ServerConnection) -> None:
        async for message in ws:
            seen.append(message)
            seen.append(trace.get_current_span().get_span_context().trace_id)
            await ws.send(message)

    async def scenario() -> None:
        async with server(handler) as url, connect(url) as ws:
            with tracer.start_as_current_span("ask"):
                await ws.send("question")
                assert await ws.recv() == "question"

    run(scenario())
    ask = telemetry.one("ask")
    client_send = next(s for s in telemetry.named("send /chat") if parent_id(s) == span_id(ask))
    server_receive = next(s for s in telemetry.named("receive /chat") if parent_id(s) == span_id(client_send))
    assert seen == ["question", trace_id(ask)], "the app sees the bare payload, inside the client's trace"
    assert server_receive.attributes["messaging.message.body.size"] == len("question")
    server_hs = next(s for s in telemetry.named("GET /chat") if s.kind is SpanKind.SERVER)
    assert server_hs.attributes["websocket.envelope"] == "frame"
    assert linked_to(server_receive, server_hs)


def test_server_push_continues_on_client_receive(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """Reverse propagation: a server-initiated message continues on the client's receive span."""
    instrument(model="message", envelope="negotiate")
    tracer = telemetry.provider.get_tracer("test")

    async def handler(ws: ServerConnection) -> None:
        with tracer.start_as_current_span("server-push"):
            await ws.send(b"\x00binary push")
        await ws.wait_closed()

    async def scenario() -> Any:
        async with server(handler) as url, connect(url) as ws:
            return await ws.recv()

    assert run(scenario()) == b"\x00binary push"
    push = telemetry.one("server-push")
    server_send = next(s for s in telemetry.named("send /chat") if parent_id(s) == span_id(push))
    client_receive = telemetry.one("receive /chat")
    assert parent_id(client_receive) == span_id(server_send)
    assert client_receive.attributes["websocket.message.type"] == "binary"
    assert client_receive.attributes["messaging.message.body.size"] == len(b"\x00binary push")


def test_payloads_survive_negotiated_envelope(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """Look-alike, empty, unicode and binary payloads arrive exactly as sent through a negotiated envelope."""
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

    async def handler(ws: ServerConnection) -> None:
        async for message in ws:
            received.append(message)
            await ws.send(message)

    async def scenario() -> list[Any]:
        replies = []
        async with server(handler) as url, connect(url) as ws:
            for payload in payloads:
                await ws.send(payload)
                replies.append(await ws.recv())
        return replies

    assert run(scenario()) == payloads
    assert received == payloads


def _traceparent(span: Any) -> bytes:
    sc = span.get_span_context()
    return f"00-{sc.trace_id:032x}-{sc.span_id:016x}-01".encode()


def test_a_binary_frame_holding_the_text_layout_is_delivered_unchanged(
    telemetry: Telemetry, instrument: Callable[..., None]
) -> None:
    """Protocol 1.1, sections 5 and 8: in a binary frame only the binary layout is an envelope.

    ``1e 77 74 31 traceparent=… 1e bin``, written bare in a binary frame (``broadcast`` bypasses ``send``),
    reaches the handler as those bytes, and its receive span takes nothing from that traceparent; a binary
    message the instrumented client sends still carries its context.
    """
    instrument(model="message", envelope="negotiate")
    tracer = telemetry.provider.get_tracer("test")
    forged = tracer.start_span("forged")
    forged.end()
    text_layout = b"\x1ewt1traceparent=" + _traceparent(forged) + b"\x1ebin"
    received: list[tuple[Any, int]] = []

    async def handler(ws: ServerConnection) -> None:
        async for message in ws:
            received.append((message, trace.get_current_span().get_span_context().span_id))
            await ws.send("ok")

    async def scenario() -> None:
        async with server(handler) as url, connect(url) as ws:
            broadcast([ws], text_layout)  # a binary frame, exactly these bytes
            assert await ws.recv() == "ok"
            with tracer.start_as_current_span("real"):
                await ws.send(b"bin")
            assert await ws.recv() == "ok"

    run(scenario())
    assert [message for message, _ in received] == [text_layout, b"bin"]
    receives = {span_id(s): s for s in telemetry.named("receive /chat")}
    bare, enveloped = (receives[span] for _, span in received)
    assert bare.attributes["websocket.message.type"] == "binary"
    assert bare.attributes["messaging.message.body.size"] == len(text_layout)
    assert parent_id(bare) != span_id(forged) and trace_id(bare) != trace_id(forged)
    assert not linked_to(bare, telemetry.one("forged"))
    client_send = next(s for s in telemetry.named("send /chat") if parent_id(s) == span_id(telemetry.one("real")))
    assert parent_id(enveloped) == span_id(client_send)


def test_recv_with_decode_cannot_tell_the_frame_type(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """``recv(decode=False)`` returns text frames as bytes: the frame type is unknown, either layout is read."""
    instrument(model="message", envelope="negotiate")
    received: list[Any] = []

    async def handler(ws: ServerConnection) -> None:
        received.append(await ws.recv(decode=False))  # a text frame, as bytes
        received.append(await ws.recv(decode=False))  # a binary frame
        received.append(await ws.recv())  # a text frame, as str
        await ws.send("done")

    async def scenario() -> None:
        async with server(handler) as url, connect(url) as ws:
            for payload in ("text ✓", b"\x00binary", "again"):
                await ws.send(payload)
            assert await ws.recv() == "done"

    run(scenario())
    assert received == ["text ✓".encode(), b"\x00binary", "again"]


def test_an_envelope_split_across_fragments(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """Section 2: ``recv`` sees the reassembled message, so a header split across fragments is read;
    ``recv_streaming`` reads the envelope from the first fragment only, and delivers such a message unchanged."""
    instrument(model="message", envelope="negotiate")
    tracer = telemetry.provider.get_tracer("test")
    sender = tracer.start_span("sender")
    sender.end()
    header = b"traceparent=" + _traceparent(sender)
    envelope = b"\x1ewt\x01" + len(header).to_bytes(2, "big") + header
    parts = [envelope[:20], envelope[20:] + b"pay", b"load"]  # the header runs into the second fragment
    got: list[Any] = []

    def fragments(opcode: int) -> bytes:
        first = bytearray(frame(parts[0], opcode))
        middle = bytearray(frame(parts[1], 0x0))
        first[0] &= 0x7F  # FIN clear: more fragments follow
        middle[0] &= 0x7F
        return bytes(first + middle) + frame(parts[2], 0x0)

    async def handler(ws: ServerConnection) -> None:
        got.append(await ws.recv())
        got.append(b"".join([fragment async for fragment in ws.recv_streaming()]))
        await ws.send("done")

    async def scenario() -> None:
        async with server(handler) as url:
            client = await RawClient.connect(url, [(b"wstrace-envelope", b"frame/1")])
            try:
                assert client.header("wstrace-envelope") == "frame/1"
                for _ in range(2):
                    client.writer.write(fragments(0x2))
                await client.writer.drain()
                assert b"done" in await client.recv()
            finally:
                await client.close_cleanly()

    run(scenario())
    assert got == [b"payload", envelope + b"payload"]
    receives = sorted(telemetry.named("receive /chat"), key=lambda s: s.start_time)
    assert [parent_id(s) == span_id(sender) for s in receives] == [True, False]


# A refusing peer -------------------------------------------------------------


def test_server_that_refuses_the_envelope(
    telemetry: Telemetry, instrument: Callable[..., None], bare_server: Any
) -> None:
    """A server instrumented with envelope=off gets plain payloads and still continues the handshake trace."""
    instrument(envelope="negotiate")
    peer = bare_server(instrumented={"WSTRACE_ENVELOPE": "off"})
    payloads: list[str | bytes] = ["one", b"two"]

    assert run(exchange(peer.url, payloads)) == payloads
    assert peer.received(len(payloads)) == payloads
    client_hs = telemetry.one("GET /chat")
    assert client_hs.attributes["websocket.envelope"] == "none"
    exported = peer.exported_spans()
    server_hs = next(s for s in exported if s["name"] == "GET /chat")
    assert server_hs["context"]["trace_id"] == f"0x{trace_id(client_hs):032x}"
    assert server_hs["attributes"]["websocket.envelope"] == "none"
    assert sum(1 for s in exported if s["name"] == "receive /chat") == 2


# Close, failures, sampling ------------------------------------------------------


def test_close_code_and_reason_recorded(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """A close frame's code and reason land on both sides' close spans, with who started it."""
    instrument(model="message")

    async def handler(ws: ServerConnection) -> None:
        await ws.recv()
        await ws.close(4001, "bye now")

    async def scenario() -> None:
        async with server(handler) as url, connect(url) as ws:
            await ws.send("hi")
            with pytest.raises(ConnectionClosed):
                await ws.recv()

    run(scenario())
    closes = {s.attributes["websocket.close.initiator"]: s for s in telemetry.named("close /chat")}
    assert set(closes) == {"local", "remote"}
    for close in closes.values():
        assert close.attributes["websocket.close.code"] == 4001
        assert close.attributes["websocket.close.reason"] == "bye now"
        assert close.status.status_code is StatusCode.UNSET
    assert telemetry.open_spans.names() == []


def test_dropped_tcp_connection_leaves_no_open_span(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """A peer that drops TCP mid-message ends every span, the open receive span with an error."""
    instrument(model="connection")
    handled = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        try:
            async for _message in ws:
                handled.set()
                await asyncio.sleep(0.2)  # still handling when the peer vanishes
        except ConnectionClosed:
            pass

    async def scenario() -> None:
        async with server(handler) as url:
            ws = await connect(url)
            await ws.send("work")
            await handled.wait()
            ws.transport.abort()  # TCP reset, no close frame
            await asyncio.sleep(0.4)

    run(scenario())
    assert telemetry.open_spans.names() == []
    server_hs = next(s for s in telemetry.named("GET /chat") if s.kind is SpanKind.SERVER)
    server_conn = next(s for s in telemetry.named("websocket /chat") if parent_id(s) == span_id(server_hs))
    assert server_conn.attributes["websocket.close.initiator"] == "none"
    assert server_conn.attributes["websocket.close.code"] == 1006
    assert server_conn.status.status_code is StatusCode.ERROR
    server_receive = next(s for s in telemetry.named("receive /chat") if parent_id(s) == span_id(server_conn))
    assert server_receive.status.status_code is StatusCode.ERROR


def test_sampled_out_handshake_makes_no_message_traces(instrument: Callable[..., None]) -> None:
    """A server handshake sampled out by its parent produces no server spans, not even message roots."""
    sampled = Telemetry(sampler=ParentBased(ALWAYS_ON))
    instrument(tracer_provider=sampled.provider, model="message")

    async def scenario() -> None:
        async with server(echo) as url:
            headers = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"}
            async with connect(url, additional_headers=headers) as ws:
                for text in ("a", "b"):
                    await ws.send(text)
                    assert await ws.recv() == text

    run(scenario())
    # Only the client's own spans exist (its handshake is a sampled root of its own).
    assert [s.kind for s in sampled.named("GET /chat")] == [SpanKind.CLIENT]
    client_hs = sampled.one("GET /chat")
    assert len(sampled.spans) == 6  # client: handshake, 2 sends, 2 receives, close
    assert all(s is client_hs or linked_to(s, client_hs) for s in sampled.spans)


def test_rejected_handshake_is_recorded(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """A handshake the server rejects ends both handshake spans with its status; the client span is an error."""
    instrument()

    def reject(connection: ServerConnection, request: Any) -> Any:
        return connection.respond(403, "no")

    async def scenario() -> None:
        async with serve(echo, "127.0.0.1", 0, process_request=reject) as srv:
            port = srv.sockets[0].getsockname()[1]
            with pytest.raises(Exception, match="403"):
                await connect(f"ws://127.0.0.1:{port}/chat")

    run(scenario())
    spans = {s.kind: s for s in telemetry.named("GET /chat")}
    assert spans[SpanKind.SERVER].attributes["http.response.status_code"] == 403
    assert spans[SpanKind.SERVER].status.status_code is StatusCode.UNSET  # 4xx is the client's fault
    assert spans[SpanKind.CLIENT].attributes["http.response.status_code"] == 403
    assert spans[SpanKind.CLIENT].status.status_code is StatusCode.ERROR
    assert telemetry.open_spans.names() == []


def test_handshake_span_current_in_process_request(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """The application's process_request hook runs inside the server handshake span."""
    instrument()
    inside: list[int] = []

    async def process_request(connection: ServerConnection, request: Any) -> None:
        inside.append(trace.get_current_span().get_span_context().span_id)

    async def scenario() -> None:
        async with serve(echo, "127.0.0.1", 0, process_request=process_request) as srv:
            async with connect(f"ws://127.0.0.1:{srv.sockets[0].getsockname()[1]}/chat"):
                pass

    run(scenario())
    server_hs = next(s for s in telemetry.named("GET /chat") if s.kind is SpanKind.SERVER)
    assert inside == [span_id(server_hs)]


# Sync API -----------------------------------------------------------------------


@contextmanager
def sync_server(handler: Callable[[Any], None]) -> Iterator[str]:
    with sync_serve(handler, "127.0.0.1", 0) as srv:
        thread = threading.Thread(target=srv.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"ws://127.0.0.1:{srv.socket.getsockname()[1]}/sync"
        finally:
            srv.shutdown()
            thread.join(5)


def test_sync_client_and_server(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """The sync client and server propagate through the handshake and the envelope, both ways."""
    instrument(model="message", envelope="negotiate")
    tracer = telemetry.provider.get_tracer("test")

    def handler(ws: Any) -> None:
        for message in ws:
            ws.send(message)

    with sync_server(handler) as url:
        with tracer.start_as_current_span("ask"), sync_connect(url) as ws:
            ws.send("sync hello")
            assert ws.recv() == "sync hello"
            ws.send(b"\x01\x02")
            assert ws.recv() == b"\x01\x02"
        assert trace.get_current_span() is trace.INVALID_SPAN, "no receive span is left current after close"
    ask = telemetry.one("ask")
    first_send = next(s for s in telemetry.named("send /sync") if parent_id(s) == span_id(ask))
    server_receive = next(s for s in telemetry.named("receive /sync") if parent_id(s) == span_id(first_send))
    echo_send = next(s for s in telemetry.named("send /sync") if parent_id(s) == span_id(server_receive))
    client_receive = next(s for s in telemetry.named("receive /sync") if parent_id(s) == span_id(echo_send))
    assert client_receive.attributes["websocket.message.type"] == "text"
    sync_hs = [s for s in telemetry.named("GET /sync") if s.kind is SpanKind.SERVER]
    assert len(sync_hs) == 1 and sync_hs[0].attributes["websocket.envelope"] == "frame"
    for _ in range(50):  # the server thread records its close a moment after the client returns
        if not telemetry.open_spans.names():
            break
        threading.Event().wait(0.02)
    assert telemetry.open_spans.names() == []
    assert len(telemetry.named("close /sync")) == 2


def test_an_open_connection_keeps_no_negotiation_headers(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """websockets keeps the upgrade request and response for the connection's lifetime: once open, wstrace's own
    negotiation headers are gone from both (memory per idle connection), and the propagation headers stay."""
    instrument()
    seen: dict[str, Any] = {}

    async def handler(ws: ServerConnection) -> None:
        assert ws.request is not None and ws.response is not None
        seen["request"] = {name.lower() for name in ws.request.headers}
        seen["response"] = {name.lower() for name in ws.response.headers}
        await ws.send(await ws.recv())

    async def scenario() -> None:
        async with server(handler) as url, connect(url) as ws:
            await ws.send("hi")
            assert await ws.recv() == "hi"
            assert ws.response is not None and "wstrace-envelope" in ws.response.headers  # the client saw them

    run(scenario())
    assert "traceparent" in seen["request"]
    assert not {"wstrace-envelope", "wstrace-session"} & (seen["request"] | seen["response"])
    assert {s.attributes["websocket.envelope"] for s in telemetry.named("GET /chat")} == {"frame"}


def _dict_made(obj: Any) -> bool:
    """Whether CPython has made ``obj``'s ``__dict__`` a dict of its own (its attributes no longer inline):
    every attribute read of that object then leaves the interpreter's fast path."""
    import gc  # noqa: PLC0415

    return any(type(r) is dict for r in gc.get_referents(obj))


def test_connections_keep_their_attributes_inline(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """Setting up the envelope's size limit must not touch the protocol object's ``__dict__`` (it did: about
    8,500 instructions per echo round trip on the server, from attribute reads made slow), on either end."""
    instrument()
    seen: dict[str, bool] = {}

    async def handler(ws: ServerConnection) -> None:
        await ws.send(await ws.recv())
        seen["server"] = _dict_made(ws.protocol)

    async def scenario() -> None:
        async with server(handler) as url, connect(url) as ws:
            await ws.send("hi")
            assert await ws.recv() == "hi"
            seen["client"] = _dict_made(ws.protocol)

    run(scenario())
    assert {s.attributes["websocket.envelope"] for s in telemetry.named("GET /chat")} == {"frame"}
    assert seen == {"server": False, "client": False}


@pytest.mark.parametrize("name", ["send", "recv"])
def test_hot_methods_have_the_library_signature(instrument: Callable[..., None], name: str) -> None:
    """The asyncio ``send`` and ``recv`` replacements are written with the library's own parameters (no
    argument tuple to build on every message): a websockets release that changes them must fail here."""
    import inspect  # noqa: PLC0415

    from websockets.asyncio.connection import Connection  # noqa: PLC0415

    instrument()
    patched = getattr(Connection, name)
    ours = inspect.signature(patched, follow_wrapped=False).parameters
    theirs = inspect.signature(patched.__wrapped__).parameters
    assert [(p.name, p.kind, p.default) for p in ours.values()] == [
        (p.name, p.kind, p.default) for p in theirs.values()
    ]
