"""``examples/chat_client.py`` over loopback: a streamed chat, the client with no spans of its own."""

from __future__ import annotations

import asyncio
from types import ModuleType

from opentelemetry.sdk.trace import ReadableSpan

from tests.conftest import Telemetry
from tests.examples import shapes
from tests.examples.shapes import Node, tree
from tests.instrumentation import contract


def load_example() -> ModuleType:
    return shapes.load_example("chat_client")


def link_kinds(span: ReadableSpan) -> list[str]:
    return sorted(str((lk.attributes or {}).get("wstrace.link.kind")) for lk in span.links)


def message_traces(telemetry: Telemetry) -> list[list[ReadableSpan]]:
    """The traces of send/receive spans, oldest first (handshakes and closes are traces of their own)."""
    return shapes.traces(telemetry.spans, ("send", "receive"))


def test_one_trace_per_prompt(telemetry: Telemetry) -> None:
    """Three prompts, each answered as a stream up to ``{"done": true}``: three traces, each the client's run of
    one, the server's receive, its reply stream and the client's receive stream; prompts 2 and 3 link to the
    answer before them (``previous``)."""
    example = load_example()
    answers = asyncio.run(example.main(telemetry.provider))
    assert answers == [f"you said: {p}" for p in example.PROMPTS]
    contract.no_open_spans(telemetry)

    traces = message_traces(telemetry)
    assert len(traces) == len(example.PROMPTS), [sorted(s.name for s in t) for t in traces]
    previous_reply: ReadableSpan | None = None
    for prompt, spans in zip(example.PROMPTS, traces, strict=True):
        chunks = len(f"you said: {prompt}".split()) + 1  # the words and the end marker
        assert len(spans) == 4
        shape: Node = tree(spans)
        assert shape == (
            "wstrace",
            "PRODUCER",
            "send /chat",
            (
                (
                    "wstrace",
                    "CONSUMER",
                    "receive /chat",
                    (("wstrace", "PRODUCER", "send /chat", (("wstrace", "CONSUMER", "receive /chat", ()),)),),
                ),
            ),
        )
        (sent,) = [s for s in spans if s.parent is None]
        (received,) = [s for s in spans if s.parent is not None and s.parent.span_id == contract.span_id(sent)]
        (reply,) = [s for s in spans if s.parent is not None and s.parent.span_id == contract.span_id(received)]
        (read,) = [s for s in spans if s.parent is not None and s.parent.span_id == contract.span_id(reply)]
        assert sent.attributes["wstrace.stream.chunk_count"] == 1, "a prompt is a run of one"
        assert "wstrace.stream.time_to_first_chunk" not in sent.attributes, "a run answers nothing"
        assert reply.attributes["wstrace.stream.chunk_count"] == chunks
        assert "wstrace.stream.time_to_first_chunk" in reply.attributes
        assert read.attributes["wstrace.stream.chunk_count"] == chunks
        assert "wstrace.stream.chunk_count" not in received.attributes
        if previous_reply is None:
            assert link_kinds(sent) == ["handshake"]
        else:
            assert link_kinds(sent) == ["handshake", "previous"]
            (previous,) = [lk for lk in sent.links if (lk.attributes or {}).get("wstrace.link.kind") == "previous"]
            assert previous.context.span_id == contract.span_id(previous_reply), "linked to the answer before"
        previous_reply = read
    # No span per token anywhere.
    assert len([s for s in telemetry.spans if s.name.startswith(("send", "receive"))]) == 4 * len(example.PROMPTS)
