"""Messages sent as fragments, on every adapter whose library can send them, against real loopback peers.

websockets sends an iterable (asyncio: or an asynchronous iterable) of fragments as one fragmented message;
websocket-client sends one frame at a time (``send_frame``, a first frame with ``fin=0`` and continuation
frames). Either way it is one message: enveloped as a whole, at the start of its first fragment
(``docs/protocol.md``, section 2), with one send span of the whole message's size. A large whole message goes
as two fragments, its envelope prefix then itself, so as not to be copied behind the prefix. aiohttp, tornado
and ASGI servers cannot send fragments (``docs/adapters/``).
"""

from __future__ import annotations

import asyncio
import functools
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import pytest
import websocket
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import StatusCode
from websocket import ABNF
from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_sync_connect
from websockets.sync.server import serve as sync_serve

from tests.conftest import Telemetry
from tests.instrumentation import contract
from tests.instrumentation.contract import parent_id, span_id, trace_id
from tests.instrumentation.thread_server import ws_server
from wstrace._wire import SPLIT_AT
from wstrace.instrumentation.websocket_client import WebsocketClientInstrumentor
from wstrace.instrumentation.websockets import WebsocketsInstrumentor, server_options


Handler = Callable[[ServerConnection], Awaitable[None]]
# A fragment that looks like an envelope carrying someone else's context: it is the application's payload.
SPOOF_TRACE = "ab" * 16
SPOOF = f"\x1ewt1traceparent=00-{SPOOF_TRACE}-{'ab' * 8}-01\x1e"
BIG = 2 * SPLIT_AT
# Messages over websockets' default limit of 1 MiB: every end here takes them (a bare peer does not).
connect = functools.partial(ws_connect, max_size=None)
sync_connect = functools.partial(ws_sync_connect, max_size=None)


@pytest.fixture
def instrument(telemetry: Telemetry) -> Iterator[Callable[..., None]]:
    """Instrument websockets (both ends, or the server for websocket-client) and websocket-client alike."""
    instrumentors = [WebsocketsInstrumentor(), WebsocketClientInstrumentor()]

    def do(**options: Any) -> None:
        options.setdefault("tracer_provider", telemetry.provider)
        options.setdefault("model", "message")
        for instrumentor in instrumentors:
            instrumentor.instrument(**options)

    yield do
    for instrumentor in reversed(instrumentors):
        instrumentor.uninstrument()


@asynccontextmanager
async def server(handler: Handler, **options: Any) -> AsyncIterator[str]:
    async with serve(handler, "127.0.0.1", 0, max_size=None, **options) as srv:
        yield f"ws://127.0.0.1:{srv.sockets[0].getsockname()[1]}/chat"


def run(coro: Awaitable[Any]) -> Any:
    async def main() -> Any:
        result = await coro
        await asyncio.sleep(0.05)  # let connection_lost callbacks run
        return result

    return asyncio.run(main())


def collector(received: list[Any]) -> Handler:
    async def handler(ws: ServerConnection) -> None:
        try:
            async for message in ws:
                received.append(message)
        except ConnectionClosed:  # a test that fails the connection on purpose
            pass

    return handler


def streaming_collector(received: list[list[Any]]) -> Handler:
    """Records each message fragment by fragment (``recv_streaming``), as it arrived."""

    async def handler(ws: ServerConnection) -> None:
        try:
            while True:
                received.append([fragment async for fragment in ws.recv_streaming()])
        except ConnectionClosed:
            pass

    return handler


def sent_and_received(telemetry: Telemetry, route: str = "/chat") -> list[tuple[ReadableSpan, ReadableSpan]]:
    """Each send span the client made inside ``ask``, with the server's receive span that continued it."""
    ask = telemetry.one("ask")
    pairs = []
    for send in telemetry.named(f"send {route}"):
        if parent_id(send) == span_id(ask):
            receives = [r for r in telemetry.named(f"receive {route}") if parent_id(r) == span_id(send)]
            assert len(receives) == 1, f"the server's receive did not continue {send.name}"
            pairs.append((send, receives[0]))
    return sorted(pairs, key=lambda pair: pair[0].start_time or 0)


def wait_for_no_open_spans(telemetry: Telemetry) -> None:
    for _ in range(100):
        if not telemetry.open_spans.names():
            return
        threading.Event().wait(0.02)
    assert telemetry.open_spans.names() == []


async def agen(*items: Any) -> AsyncIterator[Any]:
    for item in items:
        await asyncio.sleep(0)
        yield item


def gen(*items: Any) -> Iterator[Any]:
    yield from items


# websockets asyncio -------------------------------------------------------------------------------

CASES: list[tuple[str, Callable[[], Any], dict[str, Any], Any]] = [
    ("list-of-str", lambda: ["frag", "mented"], {}, "fragmented"),
    ("generator-of-bytes", lambda: gen(b"\x00\x01", b"", b"\x02"), {}, b"\x00\x01\x02"),
    ("async-generator", lambda: agen("héllo ", "wörld"), {}, "héllo wörld"),
    ("bytes-as-text", lambda: [b"utf-8 ", bytearray(b"text")], {"text": True}, "utf-8 text"),
    ("str-as-binary", lambda: gen("caf", "é"), {"text": False}, "café".encode()),
    ("memoryviews", lambda: [memoryview(b"ab"), memoryview(b"cd")], {}, b"abcd"),
    ("one-fragment", lambda: ["alone"], {}, "alone"),
    ("spoofed-prefix", lambda: [SPOOF, "inner"], {}, SPOOF + "inner"),
    ("large-first-fragment", lambda: [b"\x1ewt\x01" + bytes(BIG), b"tail"], {}, b"\x1ewt\x01" + bytes(BIG) + b"tail"),
    ("large-text-as-binary", lambda: gen("x" * BIG, "é"), {"text": False}, ("x" * BIG + "é").encode()),
]


@pytest.mark.parametrize(("fragments", "options", "arrives"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_async_fragments_arrive_whole_with_the_senders_context(
    telemetry: Telemetry, instrument: Callable[..., None], fragments: Callable[[], Any], options: Any, arrives: Any
) -> None:
    """The peer gets the joined message, enveloped once, and continues the one send span of its whole size."""
    instrument(streams=False)
    tracer = telemetry.provider.get_tracer("test")
    received: list[Any] = []

    async def scenario() -> None:
        async with server(collector(received)) as url, connect(url) as ws:
            with tracer.start_as_current_span("ask"):
                await ws.send(fragments(), **options)
            await ws.send("after")

    run(scenario())
    assert received == [arrives, "after"]
    ((send, receive),) = sent_and_received(telemetry)
    size = len(arrives.encode() if isinstance(arrives, str) else arrives)
    assert send.attributes["messaging.message.body.size"] == receive.attributes["messaging.message.body.size"] == size
    assert send.attributes["websocket.message.type"] == receive.attributes["websocket.message.type"]
    assert trace_id(receive) != int(SPOOF_TRACE, 16)
    wait_for_no_open_spans(telemetry)


def test_async_fragments_are_pulled_lazily(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """Each fragment is sent before the next is asked for: the peer reads the first one while the application's
    generator still waits to make the second."""
    instrument()
    first_seen = asyncio.Event()
    pulled: list[str] = []
    received: list[list[Any]] = []

    async def handler(ws: ServerConnection) -> None:
        fragments = []
        async for fragment in ws.recv_streaming():
            fragments.append(fragment)
            first_seen.set()
        received.append(fragments)

    async def fragments() -> AsyncIterator[str]:
        pulled.append("first")
        yield "first "
        await asyncio.wait_for(first_seen.wait(), 5)  # never set if the fragments were gathered before sending
        pulled.append("second")
        yield "second"

    async def scenario() -> None:
        async with server(handler) as url, connect(url) as ws:
            await ws.send(fragments())
            await asyncio.sleep(0.1)

    run(scenario())
    assert pulled == ["first", "second"]
    assert "".join(received[0]) == "first second" and received[0][0] == "first "


def test_an_empty_iterable_sends_nothing(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    instrument(streams=False)
    received: list[Any] = []

    async def scenario() -> None:
        async with server(collector(received)) as url, connect(url) as ws:
            await ws.send([])
            await ws.send(agen())
            await ws.send("only")

    run(scenario())
    assert received == ["only"]
    client_sends = [s for s in telemetry.named("send /chat") if s.attributes.get("messaging.message.body.size") == 4]
    assert len(telemetry.named("send /chat")) == 1 and len(client_sends) == 1


@pytest.mark.parametrize(
    ("fragments", "options", "error"),
    [
        (lambda: ["a", b"b"], {}, "iterable must contain uniform types"),
        (lambda: [b"a", "b"], {}, "iterable must contain uniform types"),
        (lambda: gen("a", b"b"), {"text": False}, "iterable must contain uniform types"),
        (lambda: agen("a", b"b"), {}, "async iterable must contain uniform types"),
        (lambda: agen("a", b"b"), {"text": False}, "async iterable must contain uniform types"),
        (lambda: [1, 2], {}, "iterable must contain bytes or str"),
    ],
    ids=["str-then-bytes", "bytes-then-str", "str-as-binary-then-bytes", "async", "async-str-as-binary", "ints"],
)
def test_mixed_fragments_raise_the_librarys_own_error(
    telemetry: Telemetry, instrument: Callable[..., None], fragments: Callable[[], Any], options: Any, error: str
) -> None:
    """The library's TypeError, as without wstrace; the send span (if the message started) records it."""
    instrument(streams=False)

    async def scenario() -> None:
        async with server(collector([])) as url, connect(url) as ws:
            with pytest.raises(TypeError, match=rf"^{error}$"):
                await ws.send(fragments(), **options)

    run(scenario())
    for send in telemetry.named("send /chat"):
        assert send.status.status_code is StatusCode.ERROR and send.attributes["error.type"] == "TypeError"
    wait_for_no_open_spans(telemetry)


def test_a_failing_generator_fails_the_send_span(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """The application's generator raises mid-message: the library fails the connection and re-raises; the
    send span records the error."""
    instrument(streams=False)

    def fragments() -> Iterator[str]:
        yield "partial"
        raise RuntimeError("no more fragments")

    async def scenario() -> None:
        async with server(collector([])) as url, connect(url) as ws:
            with pytest.raises(RuntimeError, match="no more fragments"):
                await ws.send(fragments())
            await ws.wait_closed()

    run(scenario())
    client_send = next(s for s in telemetry.named("send /chat") if s.status.status_code is StatusCode.ERROR)
    assert client_send.attributes["error.type"] == "RuntimeError"
    assert client_send.attributes["messaging.message.body.size"] == len("partial")
    wait_for_no_open_spans(telemetry)


def test_a_reply_sent_as_fragments_is_one_chunk_of_its_stream(
    telemetry: Telemetry, instrument: Callable[..., None]
) -> None:
    """With streams on, a reply sent as fragments is one chunk of the reply stream, of its whole size."""
    instrument()

    async def handler(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send([message, "-", message])
            await ws.send(agen("!", "!"))

    async def scenario() -> list[Any]:
        async with server(handler) as url, connect(url) as ws:
            await ws.send("ping")
            return [await ws.recv(), await ws.recv()]

    assert run(scenario()) == ["ping-ping", "!!"]
    wait_for_no_open_spans(telemetry)
    reply = next(s for s in telemetry.named("send /chat") if s.attributes.get("wstrace.stream.chunk_count") == 2)
    assert reply.attributes["wstrace.stream.size"] == len("ping-ping!!")


@pytest.mark.parametrize("compression", ["deflate", None])
@pytest.mark.parametrize("payload", [bytes(range(256)) * (BIG // 256), "é" * BIG], ids=["binary", "text"])
def test_a_large_message_goes_after_its_prefix_as_fragments(
    telemetry: Telemetry, instrument: Callable[..., None], payload: Any, compression: Any
) -> None:
    """A message of SPLIT_AT or more goes as a fragmented message: the envelope alone in its first fragment, then
    the payload, not copied behind it; the peer reassembles it. A small one stays one frame."""
    instrument(streams=False)
    tracer = telemetry.provider.get_tracer("test")
    streamed: list[list[Any]] = []

    async def scenario() -> None:
        async with server(streaming_collector(streamed), compression=compression) as url:
            async with connect(url, compression=compression) as ws:
                with tracer.start_as_current_span("ask"):
                    await ws.send(payload)
                    await ws.send("small")
                    await ws.send(memoryview(payload if isinstance(payload, bytes) else payload.encode()))

    run(scenario())
    empty = payload[:0]
    first, second, third = streamed
    assert first[0] == empty and len(first) >= 2 and empty.join(first) == payload
    assert second == ["small"]
    assert third[0] == b"" and b"".join(third) == (payload if isinstance(payload, bytes) else payload.encode())
    pairs = sent_and_received(telemetry)
    assert len(pairs) == 3
    size = len(payload if isinstance(payload, bytes) else payload.encode())
    assert pairs[0][0].attributes["messaging.message.body.size"] == size


def test_a_large_message_arrives_whole_through_recv(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    instrument()
    payload = bytes(range(256)) * (BIG // 256)
    received: list[Any] = []

    async def scenario() -> None:
        async with server(collector(received)) as url, connect(url) as ws:
            await ws.send(payload)
            await ws.send("x" * BIG, text=False)

    run(scenario())
    assert received == [payload, ("x" * BIG).encode()]


def test_a_cancelled_large_send_still_sends_the_whole_message(
    telemetry: Telemetry, instrument: Callable[..., None]
) -> None:
    """A send cancelled while it waits for a slow peer (the write buffer full): without wstrace its one frame is
    already written; with the message split in two fragments, the rest still goes, and the connection can send
    the next message (a fragmented message left half-sent would make every later send fail)."""
    instrument()
    reading = asyncio.Event()
    received: list[Any] = []

    async def slow(ws: ServerConnection) -> None:
        ws.transport.pause_reading()  # a peer that does not read yet
        await reading.wait()
        ws.transport.resume_reading()
        async for message in ws:
            received.append(message if isinstance(message, str) else len(message))

    async def scenario() -> None:
        listening = socket.socket()
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # small windows: the buffers fill up
        listening.bind(("127.0.0.1", 0))
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        async with serve(slow, sock=listening, max_size=None, compression=None):
            client.connect(listening.getsockname())
            async with connect(f"ws://127.0.0.1:{listening.getsockname()[1]}/chat", sock=client) as ws:
                sending = asyncio.create_task(ws.send(bytes(BIG * 4)))
                for _ in range(100):
                    await asyncio.sleep(0.01)
                    if ws.transport.get_write_buffer_size() > BIG:
                        break
                assert not sending.done(), "the send did not wait for the peer"
                sending.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await sending
                reading.set()
                await ws.send("after")
                for _ in range(200):
                    if len(received) == 2:
                        break
                    await asyncio.sleep(0.01)

    run(scenario())
    assert received == [BIG * 4, "after"]


# websockets sync ---------------------------------------------------------------------------------------


@contextmanager
def sync_server(handler: Callable[[Any], None]) -> Iterator[str]:
    with sync_serve(handler, "127.0.0.1", 0, max_size=None) as srv:
        thread = threading.Thread(target=srv.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"ws://127.0.0.1:{srv.socket.getsockname()[1]}/chat"
        finally:
            srv.shutdown()
            thread.join(5)


def test_sync_fragments_arrive_whole_with_the_senders_context(
    telemetry: Telemetry, instrument: Callable[..., None]
) -> None:
    instrument(streams=False)
    tracer = telemetry.provider.get_tracer("test")
    received: list[Any] = []
    big = b"\x1ewt\x01" + bytes(BIG)

    def handler(ws: Any) -> None:
        for message in ws:
            received.append(message)

    with sync_server(handler) as url:
        with sync_connect(url) as ws:
            with tracer.start_as_current_span("ask"):
                ws.send(["frag", "mented"])
                ws.send(gen(SPOOF, "inner"))
                ws.send(gen(b"bin", b"ary"), text=True)
                ws.send(big)
                ws.send([big, b"!"])
            ws.send([])
            # The server has all five before the broken message below ends the connection: a message the
            # handler reads only after the library's reading thread has seen the close gets no span.
            for _ in range(100):
                if len(received) == 5:
                    break
                threading.Event().wait(0.02)
            with pytest.raises(TypeError, match=r"^iterable must contain uniform types$"):
                ws.send(["a", b"b"])
    assert received == ["fragmented", SPOOF + "inner", "binary", big, big + b"!"]
    wait_for_no_open_spans(telemetry)  # the server's thread ends its last receive span at the close, a moment later
    pairs = sent_and_received(telemetry)
    assert [send.attributes["messaging.message.body.size"] for send, _ in pairs] == [
        10,
        len(SPOOF) + 5,
        6,
        len(big),
        len(big) + 1,
    ]
    assert all(trace_id(receive) == trace_id(telemetry.one("ask")) for _, receive in pairs)
    failed = [s for s in telemetry.named("send /chat") if s.status.status_code is StatusCode.ERROR]
    assert len(failed) == 1 and failed[0].attributes["error.type"] == "TypeError"


def test_sync_fragments_are_pulled_lazily(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    instrument()
    first_seen = threading.Event()
    received: list[Any] = []

    def handler(ws: Any) -> None:
        fragments = []
        for fragment in ws.recv_streaming():
            fragments.append(fragment)
            first_seen.set()
        received.append(fragments)

    def fragments() -> Iterator[bytes]:
        yield b"first "
        assert first_seen.wait(5), "the first fragment was not sent before the second was asked for"
        yield b"second"

    with sync_server(handler) as url:
        with sync_connect(url) as ws:
            ws.send(fragments())
        for _ in range(100):
            if received:
                break
            threading.Event().wait(0.02)
    assert received[0][0] == b"first " and b"".join(received[0]) == b"first second"


# Peers without the envelope -------------------------------------------------------------------------


def test_a_bare_peer_receives_fragments_unchanged(instrument: Callable[..., None], bare_server: Any) -> None:
    """An un-instrumented server (its own process) negotiates nothing: every fragment goes as it was sent."""
    instrument()
    peer = bare_server()
    big = b"\x1ewt\x01\x00\x00" + bytes(SPLIT_AT // 2)  # the peer takes up to 1 MiB

    async def scenario() -> list[Any]:
        async with connect(peer.url) as ws:
            replies = []
            for message in (["frag", "mented"], agen(SPOOF, "inner"), big):
                await ws.send(message)
                replies.append(await ws.recv())
            return replies

    expected = ["fragmented", SPOOF + "inner", big]
    assert run(scenario()) == expected
    with sync_connect(peer.url) as ws:
        ws.send(gen(SPOOF, "again"))
        assert ws.recv() == SPOOF + "again"
    assert peer.received(len(expected) + 1) == [*expected, SPOOF + "again"]


def test_an_un_negotiated_connection_sends_fragments_as_they_are(
    telemetry: Telemetry, instrument: Callable[..., None]
) -> None:
    """A server with the envelope off: the fragments and a large message go unchanged, frame for frame."""
    instrument()
    streamed: list[list[Any]] = []
    big = bytes(BIG)

    async def scenario() -> None:
        async with server(streaming_collector(streamed), process_request=server_options(envelope="off")) as url:
            async with connect(url) as ws:
                await ws.send([SPOOF, "inner"])
                await ws.send(big)

    run(scenario())
    assert streamed[0][:2] == [SPOOF, "inner"] and "".join(streamed[0]) == SPOOF + "inner"
    assert streamed[1] == [big]
    assert {s.attributes["websocket.envelope"] for s in telemetry.named("GET /chat")} == {"none"}


# JSON format ---------------------------------------------------------------------------------------------

JSON_CASES = [
    (["{", '"a":1}'], '{"a":1}', True),
    (["  ", "{", " \n", "}"], "  { \n}", True),
    ([b'{"b"', b":2}"], b'{"b":2}', True),
    (["[1,", "2]"], "[1,2]", False),
    (["{"], "{", True),  # the member still goes after the brace; the peer takes it back out
    ([" "], " ", False),
]


@pytest.mark.parametrize(("fragments", "arrives", "carried"), JSON_CASES, ids=[repr(c[1]) for c in JSON_CASES])
def test_json_format_puts_the_member_where_the_whole_message_has_it(
    telemetry: Telemetry, instrument: Callable[..., None], fragments: list[Any], arrives: Any, carried: bool
) -> None:
    """The member goes after the object's opening brace wherever the fragments put it: fragments are held
    until the brace and the next non-blank character are known. A non-object goes unchanged."""
    instrument(envelope_format="json", streams=False)
    tracer = telemetry.provider.get_tracer("test")
    received: list[Any] = []

    async def scenario() -> None:
        async with server(collector(received)) as url, connect(url) as ws:
            with tracer.start_as_current_span("ask"):
                await ws.send(agen(*fragments))
                await ws.send(list(fragments))

    run(scenario())
    assert received == [arrives, arrives]
    assert {s.attributes["websocket.envelope"] for s in telemetry.named("GET /chat")} == {"json"}
    receives = [r for r in telemetry.named("receive /chat") if trace_id(r) == trace_id(telemetry.one("ask"))]
    assert len(receives) == (2 if carried else 0)


# websocket-client -----------------------------------------------------------------------------------


def test_websocket_client_frames_are_one_message(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """A first frame with fin=0 and its continuation frames: one send span, ended with the last frame, of the
    whole message's size; the envelope in the first frame; control frames between them pass."""
    instrument(streams=False)
    tracer = telemetry.provider.get_tracer("test")
    received: list[Any] = []

    with ws_server(collector(received)) as url:
        ws = websocket.create_connection(url, timeout=5)
        with tracer.start_as_current_span("ask"):
            ws.send_frame(ABNF.create_frame("frag", ABNF.OPCODE_TEXT, fin=0))
            ws.ping("between")
            ws.send_frame(ABNF.create_frame("men", ABNF.OPCODE_CONT, fin=0))
            ws.send("ted", ABNF.OPCODE_CONT)  # send() makes a final continuation frame
            ws.send_frame(ABNF.create_frame(SPOOF, ABNF.OPCODE_TEXT, fin=0))
            ws.send_frame(ABNF.create_frame("inner", ABNF.OPCODE_CONT, fin=1))
            ws.send_frame(ABNF.create_frame(b"\x00bin", ABNF.OPCODE_BINARY, fin=0))
            ws.send_frame(ABNF.create_frame(b"ary", ABNF.OPCODE_CONT, fin=1))
        ws.close()
    assert received == ["fragmented", SPOOF + "inner", b"\x00binary"]
    pairs = sent_and_received(telemetry)
    assert [send.attributes["messaging.message.body.size"] for send, _ in pairs] == [10, len(SPOOF) + 5, 7]
    assert all(trace_id(receive) == trace_id(telemetry.one("ask")) for _, receive in pairs)
    contract.no_open_spans(telemetry)


def test_websocket_client_message_left_unfinished_is_ended(
    telemetry: Telemetry, instrument: Callable[..., None]
) -> None:
    """A fragmented message whose last frame never goes ends, as far as it went, when the connection does, or
    when the application starts another message."""
    instrument(streams=False)
    with ws_server(collector([])) as url:
        ws = websocket.create_connection(url, timeout=5)
        ws.send_frame(ABNF.create_frame("never", ABNF.OPCODE_TEXT, fin=0))
        ws.send_frame(ABNF.create_frame(" finished", ABNF.OPCODE_CONT, fin=0))
        sizes = [s.attributes["messaging.message.body.size"] for s in telemetry.named("send /chat")]
        assert sizes == []  # still being sent
        ws.close()
    wait_for_no_open_spans(telemetry)
    assert len(telemetry.named("send /chat")) == 1
    assert telemetry.named("send /chat")[0].attributes["messaging.message.body.size"] == len("never finished")


def test_websocket_client_to_a_bare_peer_sends_frames_unchanged(
    instrument: Callable[..., None], bare_server: Any
) -> None:
    instrument()
    peer = bare_server()
    ws = websocket.create_connection(peer.url, timeout=5)
    ws.send_frame(ABNF.create_frame(SPOOF, ABNF.OPCODE_TEXT, fin=0))
    ws.send_frame(ABNF.create_frame("inner", ABNF.OPCODE_CONT, fin=1))
    assert ws.recv() == SPOOF + "inner"
    ws.close()
    assert peer.received(1) == [SPOOF + "inner"]


def test_sending_outside_a_span_still_works(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """Without a span of the application's, fragments carry the run's context (streams on, the default)."""
    instrument()
    received: list[Any] = []

    async def handler(ws: ServerConnection) -> None:
        async for message in ws:
            received.append((message, trace.get_current_span().get_span_context().trace_id))

    async def scenario() -> None:
        async with server(handler) as url, connect(url) as ws:
            await ws.send(["a", "b"])
            await ws.send(gen(b"c", b"d"))

    run(scenario())
    assert [message for message, _ in received] == ["ab", b"cd"]
    wait_for_no_open_spans(telemetry)
    (run_span,) = [s for s in telemetry.named("send /chat") if s.attributes.get("wstrace.stream.chunk_count") == 2]
    assert run_span.attributes["wstrace.stream.size"] == 4
    assert {tid for _, tid in received} == {trace_id(run_span)}
