"""``examples/broadcast_timer.py`` over loopback: a background task pushes ticks to three clients."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from types import ModuleType

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind

from tests.conftest import Telemetry
from tests.examples import shapes
from tests.examples.shapes import tree
from tests.instrumentation import contract


def load_example() -> ModuleType:
    return shapes.load_example("broadcast_timer")


def handshake_of(span: ReadableSpan) -> int:
    (link,) = [lk for lk in span.links if (lk.attributes or {}).get("wstrace.link.kind") == "handshake"]
    return link.context.span_id


def test_each_connection_gets_one_push_run(telemetry: Telemetry) -> None:
    """Five ticks to each of three clients from a task with no context: per connection one trace, the server's
    run (a root, 5 chunks, linked only to its handshake: the connection received nothing) and the client's
    receive span for the first tick plus one receive stream of all five; no span per tick."""
    example = load_example()
    heard = asyncio.run(example.main(telemetry.provider))
    assert heard == [list(range(1, example.TICKS + 1))] * example.CLIENTS
    contract.no_open_spans(telemetry)

    traces: dict[int, list[ReadableSpan]] = defaultdict(list)
    for span in telemetry.spans:
        if span.name.startswith(("send", "receive")):
            traces[contract.trace_id(span)].append(span)
    assert len(traces) == example.CLIENTS, [sorted(s.name for s in t) for t in traces.values()]
    # Which client handshake each server handshake answers (the server's continues the client's).
    client_of = {
        contract.span_id(s): contract.parent_id(s) for s in telemetry.named("GET /clock") if s.kind is SpanKind.SERVER
    }
    assert len(client_of) == example.CLIENTS
    connections = set()
    for spans in traces.values():
        receive = ("wstrace", "CONSUMER", "receive /clock", ())
        assert tree(spans) == ("wstrace", "PRODUCER", "send /clock", (receive, receive))
        (run,) = [s for s in spans if s.parent is None]
        first, stream = sorted(
            (s for s in spans if s.parent is not None), key=lambda s: "wstrace.stream.chunk_count" in s.attributes
        )
        # The server's run: every tick of this connection, no time to first chunk, linked to its handshake only.
        assert run.attributes["wstrace.stream.chunk_count"] == example.TICKS
        assert "wstrace.stream.time_to_first_chunk" not in run.attributes, "a run answers nothing"
        assert [(lk.attributes or {}).get("wstrace.link.kind") for lk in run.links] == ["handshake"]
        # The client's side: the first tick's own span, then one receive stream of all of them.
        assert "wstrace.stream.chunk_count" not in first.attributes
        assert stream.attributes["wstrace.stream.chunk_count"] == example.TICKS
        assert stream.attributes["wstrace.stream.size"] == run.attributes["wstrace.stream.size"]
        # Both ends are the same connection.
        assert client_of[handshake_of(run)] == handshake_of(first) == handshake_of(stream)
        connections.add(handshake_of(run))
    assert len(connections) == example.CLIENTS, "one run per connection"
