"""Trace shapes in the core: runs of sends become one stream in every direction; one trace per client request.

In memory, a client and a server ConnectionTracer talking without sockets (the adapters feed the same events).
"""

from __future__ import annotations

import asyncio
import contextvars
import json
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind

from tests.conftest import Telemetry
from tests.routes import ROUTES_ENV
from wstrace.config import Config
from wstrace.connection import ConnectionTracer


class End:
    """One end of a connection, in its own ``contextvars.Context`` (as its own task or process would be)."""

    def __init__(self, tracer: ConnectionTracer) -> None:
        self.tracer = tracer
        self.context = contextvars.copy_context()

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.tracer, name)
        return lambda *args, **kwargs: self.context.run(method, *args, **kwargs)

    def run(self, fn: Any, *args: Any) -> Any:
        return self.context.run(fn, *args)


def _pair(telemetry: Telemetry, **options: Any) -> tuple[Any, Any]:
    tracer = telemetry.provider.get_tracer("t")
    config = Config.load({"WSTRACE_ROUTES": ROUTES_ENV}, **options)
    client = ConnectionTracer.client(tracer, config, url="ws://h/chat", scheme="ws", host="h", port=80, path="/chat")
    server = ConnectionTracer.server(tracer, config, path="/chat", headers=client.request_headers())
    response = server.response_headers()
    server.opened(response_headers=response)
    client.opened(response_headers=response)
    return End(client), End(server)


def _send(sender: Any, receiver: Any, payload: Any) -> Any:
    """One message, as the adapters report it: the receiver finishes its last message before it reads this one."""
    wire, handle = sender.send_start(payload)
    sender.send_end(handle)
    receiver.receive_done()
    return receiver.received(wire)


def _traces(telemetry: Telemetry) -> dict[int, list[ReadableSpan]]:
    found: dict[int, list[ReadableSpan]] = {}
    for span in telemetry.spans:
        if span.name.startswith(("send", "receive")):
            found.setdefault(span.context.trace_id, []).append(span)
    return found


def _kinds(spans: list[ReadableSpan]) -> list[tuple[str, Any]]:
    return sorted((s.name, s.kind.name) for s in spans)


def _link_kinds(span: ReadableSpan) -> list[str]:
    return sorted(str((lk.attributes or {}).get("wstrace.link.kind")) for lk in span.links)


def test_a_chat_client_without_spans_gets_one_trace_per_prompt(telemetry: Telemetry) -> None:
    """Prompt, a streamed reply up to "done", next prompt: each prompt and its reply are a trace of their own,
    though the client sends the next prompt while the last reply's stream span is current."""
    client, server = _pair(telemetry, stream_end=lambda p: p == "done")
    for prompt in ("one", "two", "three"):
        # Sent while the last reply's stream span is still current: the client stopped reading at "done".
        assert _send(client, server, prompt) == prompt
        for token in ("a", "b", "done"):
            _send(server, client, token)
        server.receive_done()  # the server's handler waits for the next prompt
    client.receive_done()
    client.closed(code=1000, initiator="local")
    server.closed(code=1000, initiator="remote")
    traces = list(_traces(telemetry).values())
    assert len(traces) == 3
    for spans in traces:
        assert _kinds(spans) == [
            ("receive /chat", "CONSUMER"),
            ("receive /chat", "CONSUMER"),
            ("send /chat", "PRODUCER"),
            ("send /chat", "PRODUCER"),
        ]
    # Each later prompt links to the exchange before it.
    prompts = sorted(
        (s for s in telemetry.named("send /chat") if s.kind is SpanKind.PRODUCER and not s.parent),
        key=lambda s: s.start_time or 0,
    )
    assert [_link_kinds(p) for p in prompts] == [["handshake"], ["handshake", "previous"], ["handshake", "previous"]]


def test_pushes_with_no_context_are_one_stream_linked_to_the_last_request(telemetry: Telemetry) -> None:
    """A worker (no context) pushes tokens: one stream span per run, a root linked to the message the
    connection handled last; the client's next message ends the run."""
    client, server = _pair(telemetry)
    _send(client, server, "prompt 1")
    server.receive_done()  # the handler hands the prompt to a worker and waits for the next message
    prompt = next(s for s in telemetry.named("receive /chat") if s.kind is SpanKind.CONSUMER)
    for token in ("a", "b", "c"):
        _send(server, client, token)
    _send(client, server, "prompt 2")  # a new message: the first run is over
    server.receive_done()
    for token in ("d", "e"):
        _send(server, client, token)
    server.closed(code=1000, initiator="local")
    client.closed(code=1000, initiator="remote")
    runs = sorted(
        (s for s in telemetry.named("send /chat") if s.attributes.get("wstrace.stream.chunk_count")),
        key=lambda s: s.start_time or 0,
    )
    server_runs = [s for s in runs if "inbound" in _link_kinds(s)]
    assert [s.attributes["wstrace.stream.chunk_count"] for s in server_runs] == [3, 2]
    assert _link_kinds(server_runs[0]) == ["handshake", "inbound"]
    inbound = next(lk for lk in server_runs[0].links if (lk.attributes or {}).get("wstrace.link.kind") == "inbound")
    assert inbound.context.span_id == prompt.context.span_id
    assert not [
        s
        for s in telemetry.named("send /chat")
        if s.parent is None and not s.attributes.get("wstrace.stream.chunk_count")
    ], "no span per push"


def test_an_uplink_under_an_application_span_is_one_stream(telemetry: Telemetry) -> None:
    """A device streams frames under its own "voice turn" span: one send stream span, its child."""
    client, server = _pair(telemetry)
    tracer = telemetry.provider.get_tracer("app")

    def turn() -> Any:
        with tracer.start_as_current_span("voice turn") as span:
            for _ in range(50):
                wire, handle = client.tracer.send_start(b"\x00" * 640)
                client.tracer.send_end(handle)
                server.received(wire)
                server.receive_done()
        return span

    turn_span = client.run(turn)
    client.closed(code=1000, initiator="local")
    server.closed(code=1000, initiator="remote")
    sends = [s for s in telemetry.named("send /chat") if s.kind is SpanKind.PRODUCER]
    assert len(sends) == 1
    (uplink,) = sends
    assert uplink.parent is not None and uplink.parent.span_id == turn_span.get_span_context().span_id
    assert uplink.attributes["wstrace.stream.chunk_count"] == 50
    assert uplink.attributes["wstrace.stream.size"] == 50 * 640
    # The server receives the run as one stream, after a span for its first frame alone.
    receives = telemetry.named("receive /chat")
    assert len(receives) == 2 and all(
        r.parent is not None and r.parent.span_id == uplink.context.span_id for r in receives
    )
    (downlink,) = [r for r in receives if "wstrace.stream.chunk_count" in r.attributes]
    assert downlink.attributes["wstrace.stream.chunk_count"] == 50
    first = next(r for r in receives if r is not downlink)
    # Dated from the first frame (a monotonic reading against the span's wall clock: equal to within a few ms).
    assert abs((downlink.start_time or 0) - (first.start_time or 0)) < 5_000_000


def _id(payload: Any) -> Any:
    try:
        return json.loads(payload).get("id")
    except (ValueError, AttributeError):
        return None


def test_keyed_requests_are_their_own_traces_and_a_mid_stream_answer_stays(telemetry: Telemetry) -> None:
    """With stream_key, each keyed request is a trace; a send carrying the key of an open stream stays in it."""
    client, server = _pair(telemetry, stream_key=_id)
    _send(client, server, json.dumps({"id": 1, "ask": "x"}))
    server.receive_done()
    _send(client, server, json.dumps({"id": 2, "ask": "y"}))
    server.receive_done()
    _send(server, client, json.dumps({"id": 1, "part": 1}))  # the answer to 1 starts streaming
    reply = next(s for s in telemetry.open_spans.open.values() if s.kind is SpanKind.CONSUMER)
    _send(client, server, json.dumps({"id": 1, "tool": "result"}))  # answered mid-stream, while the reply is current
    server.receive_done()
    _send(server, client, json.dumps({"id": 1, "part": 2}))  # the answer to 1 goes on: the same stream
    client.receive_done()
    client.closed(code=1000, initiator="local")
    server.closed(code=1000, initiator="remote")
    client_sends = [s for s in telemetry.named("send /chat") if s.kind is SpanKind.PRODUCER and s.parent is None]
    assert len(client_sends) == 4  # requests 1 and 2, and the server's two push runs (a message came between)
    reply_id = reply.get_span_context().span_id
    tool = next(s for s in telemetry.named("send /chat") if s.parent is not None and s.parent.span_id == reply_id)
    assert tool.context.trace_id == reply.get_span_context().trace_id
    (answer,) = [s for s in telemetry.named("receive /chat") if s.context.span_id == reply_id]
    assert answer.attributes["wstrace.stream.chunk_count"] == 2, "the mid-stream message did not end the stream"


def test_a_run_nothing_follows_ends_after_the_idle_gap(telemetry: Telemetry) -> None:
    """On an event loop, a run that no message follows ends (and is exported) once stream_idle has passed."""

    async def scenario() -> None:
        client, server = _pair(telemetry, stream_idle=0.05)
        _send(server, client, "push 1")
        _send(server, client, "push 2")
        assert not telemetry.named("send /chat"), "the run is open while it may go on"
        await asyncio.sleep(0.2)
        (run,) = [s for s in telemetry.named("send /chat") if s.kind is SpanKind.PRODUCER]
        assert run.attributes["wstrace.stream.chunk_count"] == 2
        client.closed(code=1000, initiator="remote")
        server.closed(code=1000, initiator="local")

    asyncio.run(scenario())
