"""Socket.IO in headless Chromium: the official ``socket.io-client`` browser bundle connects to an instrumented
python-socketio server with the page's trace context in the connection request's query.

A browser cannot set headers on a WebSocket, so a page sends its context in the query and the server reads it
there (``handshake_sources`` with ``query``). The page (``tests/js/socketio/page.html``) is traced with
OpenTelemetry's SDK (the ESM builds in ``js/node_modules``) and loads the bundle of npm ``socket.io-client@4``
(installed from the registry into a temporary directory); the server (``AsyncServer`` mounted as an ASGI app under
uvicorn, with the SocketioInstrumentor) also serves those files, so nothing comes from a CDN. The server's handshake
span must join the page's trace, and every event must arrive, and come back, unchanged: the browser never offers
the per-event carrier, so nothing is added to or removed from its events.
"""

from __future__ import annotations

import mimetypes
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import socketio
from opentelemetry.trace import SpanKind

from tests.browser import chromium, chromium_page
from tests.conftest import Telemetry
from tests.instrumentation import contract
from tests.instrumentation.socketio_app import asgi_server, make_server
from tests.js.node import node_modules, npm_install, require_node
from tests.peers.js_server import browser_file
from wstrace.instrumentation.socketio import SocketioInstrumentor


pytestmark = pytest.mark.timeout(300)

PAGE = Path(__file__).resolve().parent / "socketio" / "page.html"
ROUTE = "/socket.io/"
"""engine.io's path, a route of the suite's ``WSTRACE_ROUTES`` (tests/routes.py)."""
EVENTS: list[list[Any]] = [
    [{"a": 1}, "two", [3]],
    ["héllo ✓", None, 1.5],
    ["\x1ewt1\x1elook-alike"],
    [{"__wstrace__": {"traceparent": "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"}}],  # a carrier it never agreed to
]
"""The arguments of each ``echo`` the page emits: the server's handler must get exactly these, and send them back."""

ASGI = Callable[[dict[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """What the server serves besides Socket.IO: URL prefix → directory."""
    chromium("the Socket.IO browser test")  # first: nothing to install without a browser
    _node, npm = require_node()
    client = npm_install(npm, tmp_path_factory.mktemp("socketio-browser"), "socket.io-client@4")
    return {
        "/node_modules/": node_modules(npm),
        "/socket.io-client/": client / "socket.io-client" / "dist",
        "/": PAGE.parent,
    }


def with_files(app: ASGI, files: dict[str, Path]) -> ASGI:
    """``app``, except HTTP GETs of a file under one of ``files``' directories, which are served (never a path
    outside them) as ``tests/peers/js_server.py``'s static server does for ES modules: a path that names no file
    redirects to the ``.js`` or ``/index.js`` an import left out, and a file a package's ``browser`` field maps to
    another redirects there, so that the module's relative imports resolve from where it really is."""

    async def respond(send: Any, status: int, headers: list[tuple[bytes, bytes]], body: bytes = b"") -> None:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def serve(scope: dict[str, Any], receive: Callable[[], Awaitable[Any]], send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and not path.startswith(ROUTE):
            for prefix, root in files.items():
                if not path.startswith(prefix):
                    continue
                asked = root / path[len(prefix) :]
                found = next((c for c in (asked, Path(f"{asked}.js"), asked / "index.js") if c.is_file()), None)
                if found is None or not found.resolve().is_relative_to(root.resolve()):
                    break
                target = browser_file(found.resolve())
                if target != asked.resolve() and target.is_relative_to(root.resolve()):
                    location = prefix + target.relative_to(root.resolve()).as_posix()
                    await respond(send, 302, [(b"location", location.encode())])
                    return
                kind = "text/javascript" if found.suffix in (".js", ".mjs") else mimetypes.guess_type(found)[0]
                headers = [(b"content-type", (kind or "application/octet-stream").encode())]
                await respond(send, 200, headers, found.read_bytes())
                return
        await app(scope, receive, send)

    return serve


@pytest.fixture
def server(telemetry: Telemetry, files: dict[str, Path]) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """The instrumented Socket.IO server, reading context from the query; yields its URL and its handlers'
    records."""
    instrumentor = SocketioInstrumentor()
    instrumentor.instrument(tracer_provider=telemetry.provider, handshake_sources="headers,query")
    records: list[dict[str, Any]] = []
    sio = make_server(records, async_mode="asgi", ping_interval=1, ping_timeout=2)
    try:
        with asgi_server(with_files(socketio.ASGIApp(sio), files)) as url:
            yield url, records
    finally:
        instrumentor.uninstrument()


@pytest.mark.parametrize("transports", [["websocket"], ["polling", "websocket"]], ids=["websocket", "upgrade"])
def test_the_page_trace_continues_on_the_server(
    telemetry: Telemetry, server: tuple[str, list[dict[str, Any]]], tmp_path: Path, transports: list[str]
) -> None:
    """The server's handshake span is the child of the page's span (its context read from the query), over
    WebSocket and over long-polling upgraded to it; every event and ack arrives unchanged; each handler, with no
    per-event carrier agreed, is a new trace linked to the handshake."""
    url, records = server
    problems: list[str] = []
    with chromium_page("the Socket.IO browser test", tmp_path / "profile", 800, problems) as page:
        page.goto(f"{url}/page.html")
        try:
            page.wait_for_function("typeof window.socketioTest === 'function'", timeout=20000)
        except Exception as exc:
            raise AssertionError(f"the page did not load: {problems}") from exc
        result: dict[str, Any] = page.evaluate(
            "params => window.socketioTest(params)", {"url": url, "transports": transports, "events": EVENTS}
        )
    assert not problems, problems
    assert result["error"] is None, result
    assert set(result["query"]) == {"traceparent"}, "the page's propagator put its context in the query"

    # The events, both ways, exactly as sent: the handler's arguments, the "echoed" event, the ack.
    assert [r["args"] for r in records if r["event"] == "echo"] == EVENTS
    assert result["received"] == [["echoed", args] for args in EVENTS]
    assert result["acks"] == [args[0] for args in EVENTS]  # emitWithAck resolves with the ack's first argument

    for _ in range(150):  # the server ends its close span a moment after the page left
        if not telemetry.open_spans.names():
            break
        time.sleep(0.02)
    (handshake,) = [s for s in telemetry.named(f"GET {ROUTE}") if s.kind is SpanKind.SERVER]
    attributes = handshake.attributes or {}
    assert f"{contract.trace_id(handshake):032x}" == result["trace_id"], "the handshake joined the page's trace"
    assert f"{contract.parent_id(handshake):016x}" == result["span_id"], "its parent is the page's span"
    assert attributes["wstrace.context.source"] == "query"
    # Started with a polling request, the handshake is answered 200; over WebSocket, 101.
    assert attributes["http.response.status_code"] == (200 if transports[0] == "polling" else 101)
    # No carrier was agreed: each handler is a new trace, linked to the connection's handshake.
    handlers = telemetry.named("process echo /")
    assert len(handlers) == len(EVENTS)
    for handler in handlers:
        assert handler.parent is None and contract.trace_id(handler) != contract.trace_id(handshake)
        assert [link.attributes["wstrace.link.kind"] for link in handler.links] == ["handshake"]
        assert contract.linked_to(handler, handshake)
    assert [r["span_id"] for r in records if r["event"] == "echo"] == [contract.span_id(h) for h in handlers]
    contract.no_open_spans(telemetry)
