"""The ASGI middleware under daphne, uvicorn and hypercorn, each on a real loopback port.

A Starlette app instrumented by wstrace (``peers/asgi_server.py``, one process per server) sends ``welcome``
and echoes; an instrumented websockets client offers the envelope. Under every server the client receives
exactly the payloads the app sent, and the app exactly those the client sent: the envelope is in force only
where the server puts ``websocket.accept``'s headers on the 101 (ASGI spec 2.1 and later: uvicorn, hypercorn),
and then one trace joins the client's and the server's spans. daphne drops those headers: the client never
sees the answer, so the server must not put the envelope in force.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.trace import SpanKind
from websockets.asyncio.client import connect

from tests.conftest import Telemetry
from tests.instrumentation import contract
from tests.instrumentation.conftest import PeerProcess, peer_env
from wstrace.instrumentation.websockets import WebsocketsInstrumentor


ROOT = Path(__file__).resolve().parents[2]
SERVER = ROOT / "tests" / "peers" / "asgi_server.py"
PAYLOADS: list[str | bytes] = ["hello", b"\x00\x01binary\xff", "\x1ewt1\x1elook-alike", '{"json": [1, 2]}']
NEGOTIATES = {"daphne": False, "uvicorn": True, "hypercorn": True}
"""Whether the server sends ``websocket.accept``'s headers, so that the envelope can be agreed."""


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[tuple[str, PeerProcess]]:
    """The ASGI server named by the test's parameter, serving the instrumented app in its own process."""
    env = peer_env({"PYTHONPATH": f"{ROOT / 'src'}:{ROOT}"})
    peer = PeerProcess([sys.executable, str(SERVER), request.param], env)
    yield request.param, peer
    peer.stop()


def _spans(peer: PeerProcess) -> list[dict[str, Any]]:
    spans = peer.exported_spans()
    assert spans, "the server exported no span:\n" + "\n".join(peer.lines)
    return spans


def _id(value: str | None) -> int | None:
    return int(value, 16) if value else None


def _named(spans: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [s for s in spans if s["name"] == name]


@pytest.mark.parametrize("server", sorted(NEGOTIATES), indirect=True)
def test_client_receives_exactly_what_the_app_sent(telemetry: Telemetry, server: tuple[str, PeerProcess]) -> None:
    name, peer = server
    url = peer.url
    instrumentor = WebsocketsInstrumentor()
    instrumentor.instrument(tracer_provider=telemetry.provider)
    try:

        async def exchange() -> list[Any]:
            async with connect(url) as ws:
                received = [await asyncio.wait_for(ws.recv(), 10)]
                for payload in PAYLOADS:
                    await ws.send(payload)
                    received.append(await asyncio.wait_for(ws.recv(), 10))
                return received

        received = asyncio.run(exchange())
    finally:
        instrumentor.uninstrument()
    assert received == ["welcome", *PAYLOADS], "the client got something the app did not send"
    peer.wait_for("closed")
    assert peer.received(len(PAYLOADS)) == PAYLOADS, "the app got something the client did not send"

    client_hs = contract.handshake(telemetry, "/chat", SpanKind.CLIENT)
    envelope = (client_hs.attributes or {})["websocket.envelope"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any('"close /chat"' in line for line in peer.lines):
        time.sleep(0.05)  # the close span ends just after the app returns
    spans = _spans(peer)
    server_hs = next(s for s in _named(spans, "GET /chat") if s["kind"] == "SpanKind.SERVER")
    assert server_hs["attributes"]["websocket.envelope"] == envelope
    # Handshake context travels in the upgrade request's headers under every server.
    assert _id(server_hs["parent_id"]) == contract.span_id(client_hs)
    if not NEGOTIATES[name]:
        assert envelope == "none", f"{name} drops websocket.accept's headers: no envelope can be agreed"
        return
    assert envelope == "frame"
    # One trace: each server receive continues a client send; each client receive continues a server send.
    client_sends = {contract.span_id(s) for s in telemetry.named("send /chat")}
    client_receives = telemetry.named("receive /chat")
    server_sends = {_id(s["context"]["span_id"]) for s in _named(spans, "send /chat")}
    server_receives = _named(spans, "receive /chat")
    assert len(server_receives) == len(PAYLOADS) and len(client_receives) == len(PAYLOADS) + 1
    assert all(_id(s["parent_id"]) in client_sends for s in server_receives)
    assert all(contract.parent_id(s) in server_sends for s in client_receives)
    traces = {contract.trace_id(s) for s in client_receives[1:]}
    assert {_id(s["context"]["trace_id"]) for s in server_receives} == traces
