"""``examples/idle_connection.py`` over loopback: a mostly idle connection, occasional reports and one push."""

from __future__ import annotations

import asyncio
from types import ModuleType

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind

from tests.conftest import Telemetry
from tests.examples import shapes
from tests.examples.shapes import tree
from tests.instrumentation import contract


INTERVAL = 0.25
"""Seconds between reports: the example's 30 s, scaled down."""
STREAM_IDLE = 0.05
"""``stream_idle`` scaled down with it: an idle gap is longer than this."""


def load_example() -> ModuleType:
    return shapes.load_example("idle_connection")


def link_kinds(span: ReadableSpan) -> list[str]:
    return sorted(str((lk.attributes or {}).get("wstrace.link.kind")) for lk in span.links)


def linked(span: ReadableSpan, kind: str) -> int:
    (link,) = [lk for lk in span.links if (lk.attributes or {}).get("wstrace.link.kind") == kind]
    return link.context.span_id


def run(telemetry: Telemetry) -> tuple[ModuleType, list[list[ReadableSpan]]]:
    """Run the example (three reports, one push); return it and its message traces, oldest first."""
    example = load_example()
    reports, notices = asyncio.run(example.main(telemetry.provider, INTERVAL, STREAM_IDLE))
    assert reports == [{"status": "ok", "seq": n} for n in range(1, example.REPORTS + 1)]
    assert notices == [example.NOTICE]
    contract.no_open_spans(telemetry)
    return example, shapes.traces(telemetry.spans, ("send", "receive"))


def test_nothing_outlives_its_message(telemetry: Telemetry) -> None:
    """The handshake trace ends at 101 (no connection span); each report is a trace of its own (the device's run
    of one, the server's receive), linked to the handshakes; the server's push mid-gap is a trace of its own, a
    run linked ``inbound`` to the report received last; every span lasts far less than the idle gaps and is
    exported before the next report; each end's close is a root at the end."""
    example, traces = run(telemetry)
    assert not [s for s in telemetry.spans if s.name.startswith("websocket")], "no connection-long span"

    # The handshake: its own trace, ended at 101, before the first report.
    client_hs = contract.handshake(telemetry, "/status", SpanKind.CLIENT)
    server_hs = contract.handshake(telemetry, "/status", SpanKind.SERVER)
    assert contract.parent_id(server_hs) == contract.span_id(client_hs)
    assert [contract.trace_id(s) for s in telemetry.spans].count(contract.trace_id(client_hs)) == 2
    first_message = min(s.start_time or 0 for spans in traces for s in spans)
    assert max(client_hs.end_time or 0, server_hs.end_time or 0) < first_message

    # Report 1, report 2, the push (halfway between reports 2 and 3), report 3: four traces of two spans.
    assert len(traces) == example.REPORTS + 1, [sorted(s.name for s in t) for t in traces]
    one_hop = ("wstrace", "PRODUCER", "send /status", (("wstrace", "CONSUMER", "receive /status", ()),))
    assert [tree(spans) for spans in traces] == [one_hop] * len(traces)
    reports, push = [traces[0], traces[1], traces[3]], traces[2]
    sends = [next(s for s in spans if s.parent is None) for spans in traces]
    receives = [next(s for s in spans if s.parent is not None) for spans in traces]

    # The push: the server's run with no context, a root linked to the report it received last (report 2).
    run_, heard = sends[2], receives[2]
    assert linked(run_, "handshake") == contract.span_id(server_hs)
    assert link_kinds(run_) == ["handshake", "inbound"]
    assert linked(run_, "inbound") == contract.span_id(receives[1]), "linked to the last inbound message"
    assert run_.attributes["wstrace.stream.chunk_count"] == 1
    assert "wstrace.stream.time_to_first_chunk" not in run_.attributes, "a run answers nothing"
    assert contract.parent_id(heard) == contract.span_id(run_)
    assert linked(heard, "handshake") == contract.span_id(client_hs)

    # The reports: each the device's run of one (a root) and the server's receive, linked to their handshakes.
    for seq, spans in enumerate(reports, start=1):
        (sent,) = [s for s in spans if s.parent is None]
        (received,) = [s for s in spans if s.parent is not None]
        assert sent.attributes["websocket.message.ordinal"] == received.attributes["websocket.message.ordinal"] == seq
        assert sent.attributes["wstrace.stream.chunk_count"] == 1, "a report is a run of one"
        assert "wstrace.stream.time_to_first_chunk" not in sent.attributes
        assert "wstrace.stream.chunk_count" not in received.attributes
        assert linked(sent, "handshake") == contract.span_id(client_hs)
        assert link_kinds(received) == ["handshake"] and linked(received, "handshake") == contract.span_id(server_hs)
        if seq < 3:
            assert link_kinds(sent) == ["handshake"]
        else:
            # Sent after the device received the push: a run with no context links to the message handled last.
            assert link_kinds(sent) == ["handshake", "inbound"]
            assert linked(sent, "inbound") == contract.span_id(heard)

    # Nothing spans an idle gap: every span lasts a small fraction of it (the handshake included).
    for span in telemetry.spans:
        assert (span.end_time or 0) - (span.start_time or 0) < INTERVAL / 5 * 1e9, span.name
    # ... and the gaps are real: reports INTERVAL apart, the push in between.
    starts = [s.start_time or 0 for s in sends]
    assert starts[1] - starts[0] >= INTERVAL * 1e9 and starts[3] - starts[1] >= INTERVAL * 1e9
    assert starts[1] + STREAM_IDLE * 1e9 < starts[2] < starts[3] - STREAM_IDLE * 1e9
    # Exported as they happen: reports 1 and 2 and the push are out before report 3 is even sent.
    exported = [contract.span_id(s) for s in telemetry.spans]
    early = [contract.span_id(s) for spans in (reports[0], reports[1], push) for s in spans]
    assert max(exported.index(i) for i in early) < min(exported.index(contract.span_id(s)) for s in reports[2])

    # Each end's close: a root of its own at the end, linked to its handshake; the device closed first.
    closes = telemetry.named("close /status")
    assert len(closes) == 2
    (client_close,) = [s for s in closes if linked(s, "handshake") == contract.span_id(client_hs)]
    (server_close,) = [s for s in closes if linked(s, "handshake") == contract.span_id(server_hs)]
    for close in (client_close, server_close):
        assert close.parent is None and link_kinds(close) == ["handshake"]
        assert close.attributes["websocket.close.code"] == 1000
        assert (close.start_time or 0) > (reports[2][0].start_time or 0)
    assert client_close.attributes["websocket.close.initiator"] == "local"
    assert server_close.attributes["websocket.close.initiator"] == "remote"


def test_a_push_after_idle_is_not_an_answer(telemetry: Telemetry) -> None:
    """The server's push is a run that answers nothing (its own span has no time to first chunk); the device
    receives it like any run, a receive span of its own, not as the reply to the report it sent a gap before:
    no time to first chunk measuring the idle gap, no inbound response time recorded."""
    _, traces = run(telemetry)
    heard = next(s for s in traces[2] if s.parent is not None)
    assert "wstrace.stream.time_to_first_chunk" not in heard.attributes, dict(heard.attributes or {})
    assert "wstrace.stream.chunk_count" not in heard.attributes
