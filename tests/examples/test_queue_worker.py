"""``examples/queue_worker.py`` over loopback: uvicorn on a free port, an instrumented websockets client."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from types import ModuleType

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from websockets.asyncio.client import connect

from tests.conftest import Telemetry
from tests.examples import shapes
from tests.examples.shapes import tree
from tests.instrumentation import contract
from tests.instrumentation.uvicorn_server import serve, settle
from wstrace.instrumentation.websockets import WebsocketsInstrumentor


PROMPTS = ("hello", "what is a websocket", "thanks")


def load_example() -> ModuleType:
    return shapes.load_example("queue_worker")


@pytest.fixture
def example() -> ModuleType:
    return load_example()


@pytest.fixture
def client(telemetry: Telemetry, example: ModuleType) -> Iterator[None]:
    instrumentor = WebsocketsInstrumentor()
    instrumentor.instrument(tracer_provider=telemetry.provider, stream_end=example.is_done)
    yield
    instrumentor.uninstrument()


async def ask(url: str) -> list[str]:
    """One prompt at a time, each answer read up to its end marker."""
    answers = []
    async with connect(url) as ws:
        for prompt in PROMPTS:
            await ws.send(prompt)
            words = []
            while not json.loads(message := await ws.recv()).get("done"):
                words.append(json.loads(message)["token"])
            answers.append(" ".join(words))
    return answers


def link_kinds(span: ReadableSpan) -> list[str]:
    return sorted(str((lk.attributes or {}).get("wstrace.link.kind")) for lk in span.links)


def linked(span: ReadableSpan, kind: str) -> int:
    (link,) = [lk for lk in span.links if (lk.attributes or {}).get("wstrace.link.kind") == kind]
    return link.context.span_id


def test_each_answer_is_one_run_linked_to_its_prompt(telemetry: Telemetry, example: ModuleType, client: None) -> None:
    """Per prompt two traces: the prompt's (the client's send, the server's receive) and the answer's (the
    worker's run, a root linked ``inbound`` to the prompt's receive span, and the client's receive stream)."""
    with serve(example.make_app(telemetry.provider)) as base:
        answers = asyncio.run(ask(f"{base}/chat"))
        settle(telemetry)
    assert answers == [f"you said: {p}" for p in PROMPTS]
    contract.no_open_spans(telemetry)

    ordered = shapes.traces(telemetry.spans, ("send", "receive"))
    assert len(ordered) == 2 * len(PROMPTS), [sorted(s.name for s in t) for t in ordered]
    previous_answer: ReadableSpan | None = None
    for n, prompt in enumerate(PROMPTS):
        asked, answered = ordered[2 * n], ordered[2 * n + 1]
        chunks = len(f"you said: {prompt}".split()) + 1  # the words and the end marker
        assert tree(asked) == (
            "wstrace",
            "PRODUCER",
            "send /chat",
            (("wstrace", "CONSUMER", "receive /chat", ()),),
        )
        assert tree(answered) == (
            "wstrace",
            "PRODUCER",
            "send /chat",
            (("wstrace", "CONSUMER", "receive /chat", ()),),
        )
        (sent,) = [s for s in asked if s.parent is None]
        (received,) = [s for s in asked if s.parent is not None]
        (run,) = [s for s in answered if s.parent is None]
        (read,) = [s for s in answered if s.parent is not None]
        # The prompt: a run of one on the client, linked to the answer before it.
        assert sent.attributes["wstrace.stream.chunk_count"] == 1
        if previous_answer is None:
            assert link_kinds(sent) == ["handshake"]
        else:
            assert link_kinds(sent) == ["handshake", "previous"]
            assert linked(sent, "previous") == contract.span_id(previous_answer)
        # The answer: the worker's run, a root joined to the prompt by an inbound link, not its child.
        assert link_kinds(run) == ["handshake", "inbound"]
        assert linked(run, "inbound") == contract.span_id(received)
        assert run.attributes["wstrace.stream.chunk_count"] == chunks
        assert "wstrace.stream.time_to_first_chunk" not in run.attributes, "a run answers nothing"
        assert read.attributes["wstrace.stream.chunk_count"] == chunks
        previous_answer = read
    # No span per token anywhere.
    assert len([s for s in telemetry.spans if s.name.startswith(("send", "receive"))]) == 4 * len(PROMPTS)
