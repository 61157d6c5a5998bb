"""The JavaScript package in headless Chromium: a page traced with OpenTelemetry's SDK talks to a real wstrace server.

The page (js/test/browser/page.html) imports the package and OpenTelemetry's ESM builds from js/node_modules through an
import map (no bundler), served by the server process's static file server. One trace must run from the page's span
through its ``send``, the server's ``receive`` and reply stream, to the page's ``receive`` and the work it does there.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from tests.browser import CHROMIUM_FLAGS, chromium
from tests.js.node import JS, node_modules, require_node
from tests.js.peer import JsServer, js_server


pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def server() -> Any:
    chromium("the browser test")
    _node, npm = require_node()
    node_modules(npm)
    args = ["--envelope", "always", "--sources", "query,subprotocol", "--chunks", "2", "--subprotocols", "chat"]
    with js_server([*args, "--static", str(JS)]) as running:
        yield running


@pytest.fixture(scope="module")
def page(server: JsServer) -> Any:
    from playwright.sync_api import sync_playwright  # noqa: PLC0415 - optional: see tests/browser.py

    problems: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium("the browser test"), headless=True, args=CHROMIUM_FLAGS
        )
        try:
            tab = browser.new_page()
            tab.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            tab.on("pageerror", lambda error: problems.append(f"page error: {error}"))
            tab.goto(f"http://127.0.0.1:{server.http}/test/browser/page.html")
            tab.wait_for_function("typeof window.wstraceTest === 'function'", timeout=20000)
            yield tab
        finally:
            browser.close()
    assert not problems, problems


def _turn(page: Any, server: JsServer, **params: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run one turn in the page; returns its result and the server's spans of that connection."""
    params = {"url": f"ws://127.0.0.1:{server.port}/chat?room=7", "message": "hello", "replies": 2, **params}
    result: dict[str, Any] = page.evaluate("params => window.wstraceTest(params)", params)
    session = result["session"]

    def spans_of_session() -> list[dict[str, Any]] | None:
        mine = [s for s in server.spans if s["attributes"].get("websocket.session.id") == session]
        names = [s["name"] for s in mine]
        return mine if "close" in names and "send" in names else None

    return result, server.until(spans_of_session, what=f"the server's spans of session {session}")


def _by_name(spans: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for span in spans:
        assert span["name"] not in found, f"two {span['name']} spans"
        found[span["name"]] = span
    return found


def test_one_trace_from_the_page_through_the_server_and_back(page: Any, server: JsServer) -> None:
    """Query-string handshake, factory: the page span → send → server receive → reply stream → page receive."""
    result, py_spans = _turn(page, server, how="factory", handshake="query")
    assert [r["data"] for r in result["replies"]] == ["hello:0", "hello:1"], "the page gets stripped replies"
    assert server.messages[-1]["data"] == "hello", "the server's handler gets the message without its envelope"
    assert result["url"] == f"ws://127.0.0.1:{server.port}/chat?room=7", "the page sees the URL it asked for"
    assert result["instanceOfWebSocket"] and result["close"] == {"code": 1000, "reason": "bye"}

    render = [s for s in result["spans"] if s["name"] == "render reply"]
    js = _by_name([s for s in result["spans"] if s["name"] != "render reply"])
    py = _by_name([s for s in py_spans if s["name"] != "handle"])
    assert set(js) == {"page turn", "GET", "send", "receive", "close"}
    assert set(py) == {"GET", "receive", "send", "close"}

    trace_id = js["page turn"]["trace_id"]
    chain = [js["page turn"], js["send"], py["receive"], py["send"], js["receive"]]
    assert {s["trace_id"] for s in [*chain, *render]} == {trace_id}, "one trace"
    for parent, child in itertools.pairwise(chain):
        assert child["parent_span_id"] == parent["span_id"], f"{child['name']} is a child of {parent['name']}"
    assert [s["parent_span_id"] for s in render] == [js["receive"]["span_id"]] * 2, "the page's work on each reply"
    assert [r["active"] for r in result["replies"]] == [js["receive"]["span_id"]] * 2

    assert js["GET"]["kind"] == "CLIENT" and js["GET"]["parent_span_id"] == js["page turn"]["span_id"]
    assert py["GET"]["parent_span_id"] == js["GET"]["span_id"], "the handshake context travelled in the query"
    assert py["GET"]["attributes"]["wstrace.context.source"] == "query"
    assert py["GET"]["attributes"]["websocket.envelope"] == js["GET"]["attributes"]["websocket.envelope"] == "frame"
    assert js["GET"]["attributes"]["url.full"] == f"ws://127.0.0.1:{server.port}/chat"

    assert (js["send"]["kind"], py["receive"]["kind"], py["send"]["kind"], js["receive"]["kind"]) == (
        "PRODUCER",
        "CONSUMER",
        "PRODUCER",
        "CONSUMER",
    )
    send = js["send"]["attributes"]
    assert (send["websocket.message.type"], send["websocket.message.ordinal"], send["messaging.message.body.size"]) == (
        "text",
        1,
        5,
    )
    receive = js["receive"]["attributes"]
    assert (receive["wstrace.stream.chunk_count"], receive["wstrace.stream.size"]) == (2, 14)
    assert py["send"]["attributes"]["wstrace.stream.chunk_count"] == 2
    handshake_links = [
        link["span_id"] for link in js["receive"]["links"] if link["attributes"]["wstrace.link.kind"] == "handshake"
    ]
    assert handshake_links == [js["GET"]["span_id"]]

    sessions = {s["attributes"].get("websocket.session.id") for s in [*js.values(), *py.values()]} - {None}
    assert sessions == {result["session"]}, "the page and the server share the session id"
    assert js["close"]["attributes"]["websocket.close.initiator"] == "local"
    assert js["close"]["attributes"]["websocket.close.code"] == 1000


def test_subprotocol_tokens_and_binary_messages_in_the_page(page: Any, server: JsServer) -> None:
    """instrumentWebSocket: ``new WebSocket(url, ["chat"])`` carries the context in a subprotocol token; the page
    sees its own subprotocol, and binary replies (binaryType arraybuffer) without their envelope."""
    result, py_spans = _turn(
        page,
        server,
        how="global",
        handshake="subprotocol",
        protocols=["chat"],
        message=[1, 2, 3],
        binaryType="arraybuffer",
    )
    assert [r["data"] for r in result["replies"]] == [[1, 2, 3, 0], [1, 2, 3, 1]]
    assert {r["kind"] for r in result["replies"]} == {"[object ArrayBuffer]"}
    assert result["protocol"] == "chat" and server.messages[-1]["subprotocol"] == "chat"
    js = _by_name([s for s in result["spans"] if s["name"] != "render reply"])
    py = _by_name([s for s in py_spans if s["name"] != "handle"])
    assert py["GET"]["attributes"]["wstrace.context.source"] == "subprotocol"
    assert py["GET"]["parent_span_id"] == js["GET"]["span_id"]
    assert py["GET"]["attributes"]["websocket.subprotocol"] == "chat"
    assert py["receive"]["parent_span_id"] == js["send"]["span_id"]
    assert js["receive"]["parent_span_id"] == py["send"]["span_id"]
    assert js["send"]["attributes"]["websocket.message.type"] == "binary"
    assert js["receive"]["attributes"]["wstrace.stream.size"] == 8


def test_blob_replies_by_default(page: Any, server: JsServer) -> None:
    """A page that keeps binaryType ``blob`` (the default) gets a Blob of the stripped bytes."""
    result, _ = _turn(page, server, how="factory", handshake="query", message=[9])
    assert [r["data"] for r in result["replies"]] == [[9, 0], [9, 1]]
    assert {r["kind"] for r in result["replies"]} == {"[object Blob]"}
