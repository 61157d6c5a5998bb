"""``examples/socketio_chat.py`` over loopback: its server under uvicorn, its client, both instrumented."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from types import ModuleType

import pytest
from opentelemetry.sdk.trace import ReadableSpan

from tests.conftest import Telemetry
from tests.examples import shapes
from tests.examples.shapes import tree
from tests.instrumentation import contract
from tests.instrumentation.uvicorn_server import serve, settle


SCOPE = "wstrace"


@pytest.fixture
def example(telemetry: Telemetry) -> Iterator[ModuleType]:
    module = shapes.load_example("socketio_chat")
    module.instrument(telemetry.provider)
    yield module
    from wstrace.instrumentation.socketio import SocketioInstrumentor  # noqa: PLC0415

    SocketioInstrumentor().uninstrument()


def event_traces(telemetry: Telemetry) -> list[list[ReadableSpan]]:
    """The traces of events (``send``, ``process``), in the order they started."""
    return shapes.traces(telemetry.spans, ("send ", "process "))


def test_each_question_is_one_trace_with_one_stream_of_tokens(telemetry: Telemetry, example: ModuleType) -> None:
    """Per question one trace: the client's emit, the server's handler under it, one stream span for all the
    words with the client's one receive stream of them under it, and the ``done`` event; no span per token on
    either side."""
    with serve(example.make_app()) as base:
        answers = asyncio.run(example.ask(base.replace("ws://", "http://", 1)))  # engine.io starts over HTTP
        settle(telemetry)
    assert answers == [" ".join(example.answer(p)) for p in example.PROMPTS]
    contract.no_open_spans(telemetry)

    traces = event_traces(telemetry)
    assert len(traces) == len(example.PROMPTS), [sorted(s.name for s in t) for t in traces]
    for prompt, spans in zip(example.PROMPTS, traces, strict=True):
        words = len(example.answer(prompt))
        assert tree(spans) == (
            SCOPE,
            "PRODUCER",
            "send chat /",
            (
                (
                    SCOPE,
                    "CONSUMER",
                    "process chat /",
                    (
                        (SCOPE, "PRODUCER", "send done /", ((SCOPE, "CONSUMER", "process done /", ()),)),
                        (SCOPE, "PRODUCER", "send token /", ((SCOPE, "CONSUMER", "process token /", ()),)),
                    ),
                ),
            ),
        )
        (stream,) = [s for s in spans if s.name == "send token /"]
        attributes = stream.attributes or {}
        assert attributes["wstrace.stream.chunk_count"] == words
        assert 0 < attributes["wstrace.stream.time_to_first_chunk"] <= attributes["wstrace.stream.time_to_last_chunk"]
        assert attributes["messaging.socket.io.event_name"] == "token"
        (received,) = [s for s in spans if s.name == "process token /"]
        got = received.attributes or {}
        assert got["wstrace.stream.chunk_count"] == words
        # The client's wait: from its emit of the question to the first and the last word.
        assert got["wstrace.stream.time_to_first_chunk"] > attributes["wstrace.stream.time_to_first_chunk"]
        assert got["wstrace.stream.time_to_last_chunk"] > attributes["wstrace.stream.time_to_last_chunk"]
