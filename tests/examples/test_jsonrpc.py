"""``examples/jsonrpc.py`` over loopback: three JSON-RPC calls in flight on one connection, answered out of order."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from types import ModuleType
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from websockets.asyncio.server import serve

from tests.conftest import Telemetry
from tests.examples import shapes
from tests.examples.shapes import tree
from tests.instrumentation import contract
from wstrace.instrumentation.websockets import WebsocketsInstrumentor


ANSWERS = [([], "A"), ([1, 2, 3], 3), ([], "b")]
"""What the three calls of ``CALLS`` return: (partials, result)."""
FINISHED = [3, 1, 2]
"""The order the answers complete in: ``echo`` at once, ``slow`` between the chunks of ``count``."""
CHUNKS = {1: 1, 2: 4, 3: 1}
"""Messages in each call's answer: ``count`` streams three partials and its result."""
FIRST_ANSWER_ORDINAL = {3: 1, 2: 2, 1: 3}
"""The server's message ordinal of each answer's first chunk: echo's, count's first partial, slow's."""


def load_example() -> ModuleType:
    return shapes.load_example("jsonrpc")


def link_kinds(span: ReadableSpan) -> list[str]:
    return sorted(str((lk.attributes or {}).get("wstrace.link.kind")) for lk in span.links)


def message_traces(telemetry: Telemetry) -> list[list[ReadableSpan]]:
    """The traces of send/receive spans (handshakes and closes are traces of their own)."""
    traces: dict[int, list[ReadableSpan]] = defaultdict(list)
    for span in telemetry.spans:
        if span.name.startswith(("send", "receive")):
            traces[contract.trace_id(span)].append(span)
    return list(traces.values())


def child(spans: list[ReadableSpan], parent: ReadableSpan) -> ReadableSpan:
    (found,) = [s for s in spans if contract.parent_id(s) == contract.span_id(parent)]
    return found


def test_each_call_is_one_trace_whatever_the_interleaving(telemetry: Telemetry) -> None:
    """Three calls sent at once and answered out of order (3, then 1 between the chunks of 2): three traces,
    each the client's request (a plain ``send`` span, a root linked only to the handshake), the server's
    ``receive``, its reply stream (one span per answer, however many messages) and the client's receive
    stream of that answer, paired by the JSON-RPC id; no span per chunk, no trace holding two calls."""
    example = load_example()
    answers, finished = asyncio.run(example.main(telemetry.provider))
    assert answers == ANSWERS
    assert finished == FINISHED, "answered out of order"
    contract.no_open_spans(telemetry)

    traces = message_traces(telemetry)
    assert len(traces) == len(example.CALLS), [sorted(s.name for s in t) for t in traces]
    by_id: dict[int, list[ReadableSpan]] = {}
    for spans in traces:
        receive = ("wstrace", "CONSUMER", "receive /rpc", ())
        reply = ("wstrace", "PRODUCER", "send /rpc", (receive,))
        assert tree(spans) == (
            "wstrace",
            "PRODUCER",
            "send /rpc",
            (("wstrace", "CONSUMER", "receive /rpc", (reply,)),),
        )
        (request,) = [s for s in spans if s.parent is None]
        # Ids are given in the order the requests are sent: the request's ordinal is its id.
        by_id[int(request.attributes["websocket.message.ordinal"])] = spans
    assert sorted(by_id) == [1, 2, 3]

    for rid, spans in by_id.items():
        (request,) = [s for s in spans if s.parent is None]
        received = child(spans, request)
        answer = child(spans, received)
        heard = child(spans, answer)
        # The request: a keyed request is a span of its own, not a run, and a trace of its own.
        assert "wstrace.stream.chunk_count" not in request.attributes
        assert link_kinds(request) == ["handshake"]
        # The server received this very request (message n sent is message n received).
        assert received.attributes["websocket.message.ordinal"] == rid
        assert "wstrace.stream.chunk_count" not in received.attributes
        # One reply stream per call, started by its first answer message, with every message of the answer.
        assert answer.attributes["websocket.message.ordinal"] == FIRST_ANSWER_ORDINAL[rid]
        assert answer.attributes["wstrace.stream.chunk_count"] == CHUNKS[rid]
        assert heard.attributes["wstrace.stream.chunk_count"] == CHUNKS[rid]
        assert heard.attributes["wstrace.stream.size"] == answer.attributes["wstrace.stream.size"]
        assert link_kinds(answer) == link_kinds(heard) == ["handshake"]
        for span in (answer, heard):
            ttfc = span.attributes["wstrace.stream.time_to_first_chunk"]
            ttlc = span.attributes["wstrace.stream.time_to_last_chunk"]
            assert 0 < ttfc <= ttlc
            assert ("wstrace.stream.chunk_interval.mean" in span.attributes) == (CHUNKS[rid] > 1)
        # The client's answer is timed from its own request: echo's at once, slow's after SLOW.
        seconds: Any = heard.attributes["wstrace.stream.time_to_first_chunk"]
        if rid == 1:
            assert seconds >= example.SLOW
        elif rid == 3:
            assert seconds < example.STEP
        else:
            assert heard.attributes["wstrace.stream.time_to_last_chunk"] >= 3 * example.STEP
    # The streamed answer spans its chunks; slow's answer, sent while it streamed, is in a trace of its own.
    (streamed,) = [s for s in by_id[2] if s.name == "send /rpc" and s.parent is not None]
    (slow_answer,) = [s for s in by_id[1] if s.name == "send /rpc" and s.parent is not None]
    assert (streamed.start_time or 0) < (slow_answer.start_time or 0) < (streamed.end_time or 0)
    # Twelve message spans in all: four per call, none per chunk.
    assert sum(len(spans) for spans in traces) == 4 * len(example.CALLS)
    # Each end's close is a root of its own, linked to its handshake.
    closes = telemetry.named("close /rpc")
    assert len(closes) == 2 and all(s.parent is None and link_kinds(s) == ["handshake"] for s in closes)


def test_without_stream_key_the_burst_is_one_trace(telemetry: Telemetry) -> None:
    """Why the example sets ``stream_key``: without it the client cannot tell which answer is whose, and the
    three requests, sent in a row with no context, are one run (docs/streams.md): one trace holds every call.
    Nothing is left open, and no span is made per chunk of the run."""
    example = load_example()

    async def main() -> tuple[list[Any], list[int]]:
        instrumentor = WebsocketsInstrumentor()
        instrumentor.instrument(tracer_provider=telemetry.provider, stream_end=example.is_final)
        try:
            async with serve(example.server, "127.0.0.1", 0) as srv:
                port = srv.sockets[0].getsockname()[1]
                result: tuple[list[Any], list[int]] = await example.call_all(f"ws://127.0.0.1:{port}/rpc")
                await asyncio.sleep(0.05)  # the server's end sees the close
            return result
        finally:
            instrumentor.uninstrument()

    answers, finished = asyncio.run(main())
    assert answers == ANSWERS and finished == FINISHED
    contract.no_open_spans(telemetry)
    (spans,) = message_traces(telemetry)
    shape = tree(spans)
    assert shape[:3] == ("wstrace", "PRODUCER", "send /rpc")
    (run,) = [s for s in spans if s.parent is None]
    assert run.attributes["wstrace.stream.chunk_count"] == len(example.CALLS), "the three requests are one run"
    assert link_kinds(run) == ["handshake"]
    # The server answers every call with one reply stream, all of them in the run's trace.
    replies = [s for s in spans if s.name == "send /rpc" and s.parent is not None]
    assert sorted(int(s.attributes["wstrace.stream.chunk_count"]) for s in replies) == sorted(CHUNKS.values())
