"""The aiohttp adapter against real loopback clients and servers (and a websockets peer of another library)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode
from websockets.asyncio.client import connect as websockets_connect

from tests.conftest import Telemetry
from tests.instrumentation import contract
from tests.instrumentation.aiohttp_app import echo, server
from tests.instrumentation.contract import linked_to, parent_id, side, span_id, trace_id
from tests.reliability.rawws import GUID, RawClient, frame
from wstrace.instrumentation.aiohttp import AiohttpInstrumentor


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
def instrument(telemetry: Telemetry) -> Iterator[Callable[..., None]]:
    instrumentor = AiohttpInstrumentor()

    def do(**options: Any) -> None:
        options.setdefault("tracer_provider", telemetry.provider)
        instrumentor.instrument(**options)

    yield do
    instrumentor.uninstrument()


async def send(ws: Any, payload: str | bytes) -> None:
    if isinstance(payload, str):
        await ws.send_str(payload)
    else:
        await ws.send_bytes(payload)


async def exchange(url: str, payloads: list[str | bytes]) -> list[Any]:
    """Send each payload from an aiohttp client and collect the reply to it."""
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        replies = []
        for payload in payloads:
            await send(ws, payload)
            replies.append((await ws.receive()).data)
        return replies


def run(coro: Awaitable[Any]) -> Any:
    async def main() -> Any:
        result = await coro
        await asyncio.sleep(0.05)  # let connection_lost callbacks run
        return result

    return asyncio.run(main())


# Models ---------------------------------------------------------------------------


def test_connection_model_one_trace(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """In the connection model the client span, both handshakes, both connections and all messages share one trace."""
    instrument(model="connection", envelope="off")
    tracer = telemetry.provider.get_tracer("test")

    async def scenario() -> None:
        async with server(echo) as url, aiohttp.ClientSession() as session:
            with tracer.start_as_current_span("client-op"):
                async with session.ws_connect(url) as ws:
                    for text in ("a", "b"):
                        await ws.send_str(text)
                        assert await ws.receive_str() == text

    run(scenario())
    root = telemetry.one("client-op")
    client_hs, server_hs = side(telemetry, SpanKind.CLIENT), side(telemetry, SpanKind.SERVER)
    assert parent_id(client_hs) == span_id(root)
    assert parent_id(server_hs) == span_id(client_hs)
    connections = telemetry.named("websocket /chat")
    assert len(connections) == 2
    server_conn = next(s for s in connections if parent_id(s) == span_id(server_hs))
    server_receives = [s for s in telemetry.named("receive /chat") if parent_id(s) == span_id(server_conn)]
    assert len(server_receives) == 2
    assert len(telemetry.named("receive /chat")) == 4
    assert {trace_id(s) for s in telemetry.spans} == {trace_id(root)}
    assert server_hs.end_time < server_receives[0].start_time  # the handshake span ends at 101
    assert server_conn.attributes["websocket.close.code"] == 1000
    assert server_conn.attributes["websocket.close.initiator"] == "remote"
    contract.no_open_spans(telemetry)


def test_receive_span_is_current_in_the_handler(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """Each message is its own trace in the handler; the reply is its child; nothing stays current after."""
    instrument(model="message", envelope="off")
    current: list[int] = []
    after: list[Any] = []

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            current.append(trace.get_current_span().get_span_context().span_id)
            await ws.send_str(msg.data)
        after.append(trace.get_current_span())
        return ws

    async def scenario() -> None:
        async with server(handler) as url:
            assert await exchange(url, ["a", "b", "c"]) == ["a", "b", "c"]

    run(scenario())
    server_hs = side(telemetry, SpanKind.SERVER)
    receives = [s for s in telemetry.named("receive /chat") if linked_to(s, server_hs)]
    assert [span_id(s) for s in sorted(receives, key=lambda s: s.start_time)] == current
    assert len({trace_id(s) for s in receives} | {trace_id(server_hs)}) == 4
    for receive in receives:
        assert receive.parent is None
        replies = [s for s in telemetry.named("send /chat") if parent_id(s) == span_id(receive)]
        assert len(replies) == 1, "the echo is a child of the message it answers"
    assert after == [trace.INVALID_SPAN]


def test_route_template_names_the_spans(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """A dynamic route names the server spans by its template; url.path keeps the real path."""
    instrument(model="message")

    async def scenario() -> None:
        async with server(echo, route="/rooms/{room}", path="/rooms/42?token=x") as url:
            assert await exchange(url, ["hi"]) == ["hi"]

    run(scenario())
    server_hs = side(telemetry, SpanKind.SERVER, "/rooms/{room}")
    assert server_hs.attributes["url.path"] == "/rooms/42"
    assert server_hs.attributes["http.route"] == "/rooms/{room}"
    assert len(telemetry.named("receive /rooms/{room}")) == 1
    client_hs = side(telemetry, SpanKind.CLIENT, "/rooms/42")
    # The query (a token, here) is never recorded.
    assert client_hs.attributes["url.full"] == f"ws://127.0.0.1:{client_hs.attributes['server.port']}/rooms/42"


# Every send and receive method ----------------------------------------------------


def test_every_send_and_receive_method(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """send_json/send_frame/send_json_bytes and receive_str/bytes/json: one span each, through the envelope."""
    instrument(model="message", envelope="negotiate", streams=False)
    got: list[Any] = []

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        got.append(await ws.receive_json())
        got.append(await ws.receive_str())
        got.append(await ws.receive_bytes())
        got.append(json.loads(await ws.receive_bytes()))  # send_json_bytes sends a binary frame
        await ws.send_json({"back": True})
        await ws.send_frame(b"frame text", WSMsgType.TEXT)
        await ws.send_frame(b"\x01frame binary", WSMsgType.BINARY)
        await ws.ping(b"control")  # not a message: no span, no envelope
        await ws.receive()
        return ws

    async def scenario() -> list[Any]:
        async with server(handler) as url, aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
            await ws.send_json({"n": 1})
            await ws.send_frame(b"raw text", WSMsgType.TEXT)
            await ws.send_frame(b"\x00raw binary", WSMsgType.BINARY)
            await ws.send_json_bytes({"n": 2}, dumps=lambda d: json.dumps(d).encode())
            replies = [await ws.receive_json(), await ws.receive_str(), await ws.receive_bytes()]
            await ws.send_str("done")
            return replies

    assert run(scenario()) == [{"back": True}, "frame text", b"\x01frame binary"]
    assert got == [{"n": 1}, "raw text", b"\x00raw binary", {"n": 2}]
    client_hs, server_hs = side(telemetry, SpanKind.CLIENT), side(telemetry, SpanKind.SERVER)
    sent = contract.messages(telemetry, "/chat", "send", client_hs, ["text", "text", "binary", "binary", "text"])
    received = contract.messages(telemetry, "/chat", "receive", server_hs, ["text", "text", "binary", "binary", "text"])
    contract.continued(sent, received)
    replies = contract.messages(telemetry, "/chat", "send", server_hs, ["text", "text", "binary"])
    contract.continued(replies, contract.messages(telemetry, "/chat", "receive", client_hs, ["text", "text", "binary"]))
    contract.no_open_spans(telemetry)


def test_reply_stream(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """Chunks a server handler sends while handling one message form one stream, continued by the client."""
    instrument(model="message", envelope="negotiate")

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            for n in range(3):
                await ws.send_str(f"{msg.data} {n}")
        return ws

    async def scenario() -> list[Any]:
        async with server(handler) as url, aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
            await ws.send_str("tokens")
            return [await ws.receive_str() for _ in range(3)]

    assert run(scenario()) == ["tokens 0", "tokens 1", "tokens 2"]
    server_hs = side(telemetry, SpanKind.SERVER)
    server_receive = next(s for s in telemetry.named("receive /chat") if linked_to(s, server_hs))
    stream = next(s for s in telemetry.named("send /chat") if parent_id(s) == span_id(server_receive))
    assert stream.attributes["wstrace.stream.chunk_count"] == 3
    client_stream = next(s for s in telemetry.named("receive /chat") if parent_id(s) == span_id(stream))
    assert client_stream.attributes["wstrace.stream.chunk_count"] == 3
    contract.no_open_spans(telemetry)


def test_payloads_survive_negotiated_envelope(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """Look-alike, empty, unicode and binary payloads arrive exactly as sent, both ways."""
    instrument(envelope="negotiate")
    payloads: list[str | bytes] = ["", "\x1ewt1\x1e", "héllo ✓", '{"a":1}', b"", b"\x1ewt\x01\x00\x00x"]
    payloads.append(bytes(range(256)))
    received: list[Any] = []

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            received.append(msg.data)
            await send(ws, msg.data)
        return ws

    async def scenario() -> list[Any]:
        async with server(handler) as url:
            return await exchange(url, payloads)

    assert run(scenario()) == payloads
    assert received == payloads
    assert side(telemetry, SpanKind.SERVER).attributes["websocket.envelope"] == "frame"


def test_json_envelope(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """The json format travels in send_json/receive_json objects and leaves other messages alone."""
    instrument(envelope="negotiate", envelope_format="json")
    seen: list[Any] = []

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        seen.append(await ws.receive_str())
        seen.append(await ws.receive_str())
        await ws.send_json({"ok": 1})
        await ws.receive()
        return ws

    async def scenario() -> Any:
        async with server(handler) as url, aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
            await ws.send_json({"op": "ping"})
            await ws.send_str("[1,2]")
            return await ws.receive_json()

    assert run(scenario()) == {"ok": 1}
    assert seen == ['{"op": "ping"}', "[1,2]"]
    assert side(telemetry, SpanKind.SERVER).attributes["websocket.envelope"] == "json"
    client_send = telemetry.named("send /chat")[0]
    server_receive = next(s for s in telemetry.named("receive /chat") if parent_id(s) == span_id(client_send))
    assert server_receive.kind is SpanKind.CONSUMER


def test_subprotocol_token_carries_context_and_is_echoed(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """A browser-style wstrace.tp. token parents the server handshake; offered alone, it is echoed back."""
    instrument(handshake_sources="subprotocol")
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    token = "wstrace.tp." + traceparent
    selected: list[Any] = []

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=("chat.v2",))
        await ws.prepare(request)
        selected.append(ws.ws_protocol)
        await ws.close()
        return ws

    async def scenario() -> list[Any]:
        chosen = []
        async with server(handler) as url:
            for offer in ([token], [token, "chat.v2"]):
                # An un-instrumented client, like a browser: it sends no headers of ours.
                async with websockets_connect(url, subprotocols=offer) as ws:  # type: ignore[arg-type]
                    chosen.append(ws.subprotocol)
        return chosen

    assert run(scenario()) == [token, "chat.v2"]
    assert selected == [None, "chat.v2"]
    for span in telemetry.named("GET /chat"):
        assert f"{trace_id(span):032x}" == "0af7651916cd43dd8448eb211c80319c"
        assert span.attributes["wstrace.context.source"] == "subprotocol"


def test_handshake_span_current_in_on_response_prepare(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """Signal handlers that run while the 101 is prepared see the server handshake span."""
    instrument()
    inside: list[int] = []

    async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
        inside.append(trace.get_current_span().get_span_context().span_id)

    async def scenario() -> None:
        app = web.Application()
        app.router.add_get("/chat", echo)
        app.on_response_prepare.append(on_prepare)
        runner = web.AppRunner(app, shutdown_timeout=1)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        try:
            assert await exchange(f"ws://127.0.0.1:{runner.addresses[0][1]}/chat", ["x"]) == ["x"]
        finally:
            await runner.cleanup()

    run(scenario())
    assert inside == [span_id(side(telemetry, SpanKind.SERVER))]


# Close, failures ---------------------------------------------------------------------


def test_server_close_code_and_reason_recorded(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """A server close frame's code and reason land on both close spans, with who started it."""
    instrument(model="message")

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.receive()
        await ws.close(code=4001, message=b"bye now")
        return ws

    async def scenario() -> Any:
        async with server(handler) as url, aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
            await ws.send_str("hi")
            return await ws.receive()

    msg = run(scenario())
    assert (msg.type, msg.data, msg.extra) == (WSMsgType.CLOSE, 4001, "bye now")
    closes = {s.attributes["websocket.close.initiator"]: s for s in telemetry.named("close /chat")}
    assert set(closes) == {"local", "remote"}
    for close in closes.values():
        assert close.attributes["websocket.close.code"] == 4001
        assert close.attributes["websocket.close.reason"] == "bye now"
        assert close.status.status_code is StatusCode.UNSET
    assert linked_to(closes["local"], side(telemetry, SpanKind.SERVER))
    contract.no_open_spans(telemetry)


def test_client_close_code_and_reason_recorded(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """A client close (connection model) ends both connection spans with its code, reason and initiator."""
    instrument(model="connection")

    async def scenario() -> None:
        async with server(echo) as url, aiohttp.ClientSession() as session:
            ws = await session.ws_connect(url)
            await ws.send_str("hi")
            await ws.receive()
            assert await ws.close(code=4002, message=b"client leaves")

    run(scenario())
    client_conn = next(
        s for s in telemetry.named("websocket /chat") if parent_id(s) == span_id(side(telemetry, SpanKind.CLIENT))
    )
    server_conn = next(
        s for s in telemetry.named("websocket /chat") if parent_id(s) == span_id(side(telemetry, SpanKind.SERVER))
    )
    assert client_conn.attributes["websocket.close.initiator"] == "local"
    assert server_conn.attributes["websocket.close.initiator"] == "remote"
    for conn in (client_conn, server_conn):
        assert conn.attributes["websocket.close.code"] == 4002
        assert conn.attributes["websocket.close.reason"] == "client leaves"
    contract.no_open_spans(telemetry)


CODELESS_CLOSE = b"\x88\x00"
"""An unmasked close frame with no status code (RFC 6455 section 5.5.1): the code recorded is 1005."""


def _codeless_close(telemetry: Telemetry, kind: SpanKind) -> None:
    close = telemetry.one("close /chat")
    assert linked_to(close, side(telemetry, kind))
    assert close.attributes["websocket.close.code"] == 1005
    assert close.attributes["websocket.close.initiator"] == "remote"
    assert close.status.status_code is StatusCode.UNSET
    contract.no_open_spans(telemetry)


def test_close_frame_without_a_code_to_the_server(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """A peer's close frame without a status code is 1005 on the server, as on every adapter (aiohttp says 0)."""
    instrument()

    async def scenario() -> tuple[int, bytes]:
        async with server(echo) as url:
            client = await RawClient.connect(url)
            client.writer.write(frame(b"", 0x8))
            answer = await client.recv_frame()
            await client.close()
            await asyncio.sleep(0.1)
            return answer

    assert run(scenario())[0] == 0x8
    _codeless_close(telemetry, SpanKind.SERVER)


def test_close_frame_without_a_code_to_the_client(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """A server's close frame without a status code is 1005 on the client, as on every adapter."""
    instrument()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        key = next(
            line.split(b":", 1)[1].strip()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key:")
        )
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n" + CODELESS_CLOSE
        )
        await reader.read(2)  # the client's answer, then the server closes the TCP connection
        writer.close()

    async def scenario() -> Any:
        srv = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        async with srv, aiohttp.ClientSession() as session:
            ws = await session.ws_connect(f"ws://127.0.0.1:{port}/chat")
            msg = await ws.receive()
            await ws.close()
            await asyncio.sleep(0.1)
            return msg

    msg = run(scenario())
    assert (msg.type, msg.data) == (WSMsgType.CLOSE, 0)  # aiohttp's way of saying "no code"
    _codeless_close(telemetry, SpanKind.CLIENT)


def test_client_drops_tcp_mid_message(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """A client that vanishes while the server handles its message ends every server span, as errors."""
    instrument(model="connection")
    handled = asyncio.Event()

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for _msg in ws:
            handled.set()
            await asyncio.sleep(0.2)  # still handling when the peer vanishes
        return ws

    async def scenario() -> None:
        async with server(handler) as url:
            ws = await websockets_connect(url)  # another library's client, dropped by hand
            await ws.send("work")
            await handled.wait()
            ws.transport.abort()  # TCP reset, no close frame
            await asyncio.sleep(0.4)

    run(scenario())
    contract.no_open_spans(telemetry)
    server_conn = next(
        s for s in telemetry.named("websocket /chat") if parent_id(s) == span_id(side(telemetry, SpanKind.SERVER))
    )
    assert server_conn.attributes["websocket.close.initiator"] == "none"
    assert server_conn.attributes["websocket.close.code"] == 1006
    assert server_conn.status.status_code is StatusCode.ERROR
    receive = next(s for s in telemetry.named("receive /chat") if parent_id(s) == span_id(server_conn))
    assert receive.status.status_code is StatusCode.ERROR


def test_unread_close_frame_when_tcp_goes(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """A peer that sends a close frame and drops TCP while the handler is busy: its code, initiator remote."""
    instrument(model="connection")
    handled = asyncio.Event()

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.receive()
        handled.set()
        await asyncio.sleep(0.3)  # busy: the close frame waits in aiohttp's queue
        return ws

    async def scenario() -> None:
        async with server(handler) as url:
            ws = await websockets_connect(url)
            await ws.send("work")
            await handled.wait()
            ws.protocol.send_close(4003, "gone")
            ws.send_data()
            await asyncio.sleep(0.05)
            ws.transport.abort()
            await asyncio.sleep(0.05)
            contract.no_open_spans(telemetry)  # before the handler is done with its message

    run(scenario())
    server_conn = telemetry.one("websocket /chat")
    assert server_conn.attributes["websocket.close.initiator"] == "remote"
    assert server_conn.attributes["websocket.close.code"] == 4003
    assert server_conn.attributes["websocket.close.reason"] == "gone"
    assert server_conn.status.status_code is StatusCode.UNSET


@pytest.mark.parametrize("reading", [True, False], ids=["client-receiving", "client-idle"])
def test_server_drops_tcp(telemetry: Telemetry, instrument: Callable[..., None], reading: bool) -> None:
    """A server that vanishes ends the client's spans, whether the client waits in receive() or not."""
    instrument(model="connection")

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.receive()
        assert request.transport is not None
        request.transport.abort()
        await ws.receive()
        return ws

    async def scenario() -> Any:
        async with server(handler) as url, aiohttp.ClientSession() as session:
            ws = await session.ws_connect(url)
            await ws.send_str("go")
            if reading:
                msg = await ws.receive()
            else:
                await asyncio.sleep(0.2)
                contract.no_open_spans(telemetry)  # ended with no receive() or close() from the app
                msg = await ws.receive()
            await ws.close()
            return msg.type

    assert run(scenario()) in (WSMsgType.CLOSED, WSMsgType.ERROR)
    contract.no_open_spans(telemetry)
    for conn in telemetry.named("websocket /chat"):
        assert conn.attributes["websocket.close.initiator"] == "none"
        assert conn.attributes["websocket.close.code"] == 1006
        assert conn.status.status_code is StatusCode.ERROR


def test_handler_exception_ends_the_connection(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """A handler that raises after the upgrade leaves no open span; the connection span records the error."""
    instrument(model="connection")

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.receive()
        raise RuntimeError("handler bug")

    async def scenario() -> None:
        async with server(handler) as url, aiohttp.ClientSession() as session:
            async with session.ws_connect(url) as ws:
                await ws.send_str("boom")
                await ws.receive()

    run(scenario())
    contract.no_open_spans(telemetry)
    server_conn = next(
        s for s in telemetry.named("websocket /chat") if parent_id(s) == span_id(side(telemetry, SpanKind.SERVER))
    )
    assert server_conn.status.status_code is StatusCode.ERROR
    assert server_conn.attributes["websocket.close.code"] == 1006


def test_rejected_handshakes_are_recorded(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """A 403 ends the client handshake span as an error; a plain GET on a WebSocket route ends the server's with 400."""
    instrument()

    async def forbidden(request: web.Request) -> web.StreamResponse:
        raise web.HTTPForbidden()

    async def scenario() -> None:
        async with server(forbidden, route="/deny") as url, aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
                await session.ws_connect(url)
            assert caught.value.status == 403
        async with server(echo) as url, aiohttp.ClientSession() as session:
            async with session.get(url.replace("ws://", "http://")) as response:
                assert response.status == 400

    run(scenario())
    client_hs = telemetry.one("GET /deny")
    assert client_hs.kind is SpanKind.CLIENT
    assert client_hs.attributes["http.response.status_code"] == 403
    assert client_hs.status.status_code is StatusCode.ERROR
    server_hs = telemetry.one("GET /chat")
    assert server_hs.kind is SpanKind.SERVER
    assert server_hs.attributes["http.response.status_code"] == 400
    assert server_hs.status.status_code is StatusCode.UNSET  # 4xx is the client's fault
    contract.no_open_spans(telemetry)


def test_caller_headers_win_and_are_kept(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """The application's own upgrade headers reach the server; a header it set itself is not replaced."""
    instrument()
    seen: list[Any] = []
    mine = "00-11111111111111111111111111111111-2222222222222222-01"

    async def handler(request: web.Request) -> web.WebSocketResponse:
        seen.append((request.headers.get("x-app"), request.headers.getall("traceparent")))
        return await echo(request)

    async def scenario() -> None:
        async with server(handler) as url, aiohttp.ClientSession() as session:
            async with session.ws_connect(url, headers={"X-App": "1", "traceparent": mine}) as ws:
                await ws.send_str("x")
                await ws.receive()

    run(scenario())
    assert seen == [("1", [mine])]
    assert f"{trace_id(side(telemetry, SpanKind.SERVER)):032x}" == "11111111111111111111111111111111"


def test_import_loads_no_aiohttp() -> None:
    """Importing the adapter does not import aiohttp (opentelemetry-instrument loads every entry point)."""
    code = "import sys, wstrace.instrumentation.aiohttp; print(any(m.split('.')[0] == 'aiohttp' for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize("name", ["send_str", "send_bytes", "receive"])
@pytest.mark.parametrize("side", ["client", "server"])
def test_hot_methods_have_the_library_signature(instrument: Callable[..., None], name: str, side: str) -> None:
    """The replacements of the methods every message takes are written with aiohttp's own parameters (no
    argument tuple to build on every message): an aiohttp release that changes them must fail here."""
    import inspect  # noqa: PLC0415

    from aiohttp.client_ws import ClientWebSocketResponse  # noqa: PLC0415
    from aiohttp.web_ws import WebSocketResponse  # noqa: PLC0415

    instrument()
    patched = getattr(ClientWebSocketResponse if side == "client" else WebSocketResponse, name)
    ours = inspect.signature(patched, follow_wrapped=False).parameters
    theirs = inspect.signature(patched.__wrapped__).parameters
    assert [(p.name, p.kind, p.default) for p in ours.values()] == [
        (p.name, p.kind, p.default) for p in theirs.values()
    ]
