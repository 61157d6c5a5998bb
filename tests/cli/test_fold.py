"""``wstrace.cli.fold``: runs of identical sibling subtrees as first, summary, last; every span still counted."""

from __future__ import annotations

from typing import Optional

from rich.console import Console

from wstrace.cli.export import SpanRecord
from wstrace.cli.fold import FOLD_MIN, fold, runs
from wstrace.cli.view import Row, Trace, build_traces, render_terminal


TRACE = "t" * 32


def span(
    span_id: str,
    name: str,
    start: int,
    parent: Optional[str] = None,
    size: int = 0,
    kind: str = "PRODUCER",
    service: str = "voice-device",
    attributes: Optional[dict[str, object]] = None,
) -> SpanRecord:
    """A 10 ns span of ``service``, with a payload size when ``size``."""
    return SpanRecord(
        trace_id=TRACE,
        span_id=span_id,
        parent_span_id=parent,
        name=name,
        kind=kind,
        start_ns=start,
        end_ns=start + 10,
        attributes={**({"messaging.message.body.size": size} if size else {}), **(attributes or {})},
        resource={"service.name": service},
    )


def one_trace(spans: list[SpanRecord]) -> Trace:
    [trace] = build_traces(spans)
    return trace


def names(trace: Trace) -> list[tuple[int, str]]:
    return [(row.depth, row.span.name) for row in trace.rows]


def sends(count: int, changed: Optional[dict[str, str]] = None) -> list[SpanRecord]:
    """A root and ``count`` sends under it, each with a receive child; ``changed`` name, kind or service of
    send number 2."""
    spans = [span("root", "voice turn", 0)]
    for i in range(count):
        send = {
            "name": "send /voice",
            "kind": "PRODUCER",
            "service": "voice-device",
            **((changed or {}) if i == 2 else {}),
        }
        start = 100 * (i + 1)
        spans.append(span(f"s{i}", send["name"], start, "root", 640, send["kind"], send["service"]))
        spans.append(span(f"r{i}", "receive /voice", start + 5, f"s{i}", service="voice-server"))
    return spans


def test_long_runs_of_identical_subtrees_fold_to_first_summary_last() -> None:
    """A run of six: its first and last subtree, between them one row for the four others, which it holds."""
    spans = [*sends(6), span("end", "send /voice", 1000, "root", size=34)]  # a different subtree: kept
    trace = one_trace(spans)
    folded = fold(trace)
    assert names(folded) == [
        (0, "voice turn"),
        (1, "send /voice"),
        (2, "receive /voice"),
        (1, "⋯ 4 more send /voice (8 spans)"),
        (1, "send /voice"),
        (2, "receive /voice"),
        (1, "send /voice"),
    ]
    summary = folded.rows[3]
    assert (summary.span.start_ns, summary.span.end_ns) == (200, 515)  # the hidden subtrees' time
    assert summary.span.attributes["messaging.message.body.size"] == 4 * 640  # their top spans' sizes
    assert summary.span.kind == "PRODUCER" and not summary.orphan
    assert [row.span.span_id for row in summary.folded] == ["s1", "r1", "s2", "r2", "s3", "r3", "s4", "r4"]
    assert [row.depth for row in summary.folded] == [1, 2] * 4
    assert summary.hidden_spans == 8 and folded.rows[1].hidden_spans == 0
    assert [s.span_id for s in folded.every_span()] == [s.span_id for s in trace.every_span()]


def test_runs_below_the_minimum_are_not_folded() -> None:
    """FOLD_MIN - 1 identical siblings stay as they are; FOLD_MIN fold; ``minimum`` sets the bar."""
    short = one_trace(sends(FOLD_MIN - 1))
    assert fold(short).rows == short.rows and fold(short).spans == short.spans
    exact = fold(one_trace(sends(FOLD_MIN)))
    assert [name for depth, name in names(exact) if depth == 1] == [
        "send /voice",
        f"⋯ {FOLD_MIN - 2} more send /voice ({2 * (FOLD_MIN - 2)} spans)",
        "send /voice",
    ]
    assert fold(short, minimum=3).rows != short.rows
    assert fold(one_trace(sends(20)), minimum=21).rows == one_trace(sends(20)).rows


def test_a_summary_of_one_span_subtrees_names_no_span_count() -> None:
    spans = [span("root", "turn", 0)] + [span(f"s{i}", "send", 10 * (i + 1), "root", size=2) for i in range(7)]
    folded = fold(one_trace(spans))
    assert names(folded) == [(0, "turn"), (1, "send"), (1, "⋯ 5 more send"), (1, "send")]
    assert folded.rows[2].span.attributes == {"messaging.message.body.size": 10}
    no_size = fold(one_trace([span("root", "turn", 0)] + [span(f"s{i}", "x", i + 1, "root") for i in range(5)]))
    assert no_size.rows[2].span.attributes == {}  # no payload: no size=0 on the summary


def test_nested_runs_fold_at_each_level_and_inside_the_summary() -> None:
    """Six sends of six chunks each: the chunks of the shown sends fold, and so do those behind the summary."""
    spans = [span("root", "voice turn", 0)]
    for i in range(6):
        spans.append(span(f"s{i}", "send /voice", 1000 * (i + 1), "root", size=100))
        spans += [span(f"s{i}c{j}", "chunk", 1000 * (i + 1) + 10 * j, f"s{i}", size=1) for j in range(6)]
    trace = one_trace(spans)
    folded = fold(trace)
    assert names(folded) == [
        (0, "voice turn"),
        (1, "send /voice"),
        (2, "chunk"),
        (2, "⋯ 4 more chunk"),
        (2, "chunk"),
        (1, "⋯ 4 more send /voice (28 spans)"),
        (1, "send /voice"),
        (2, "chunk"),
        (2, "⋯ 4 more chunk"),
        (2, "chunk"),
    ]
    summary = folded.rows[5]
    assert summary.span.attributes["messaging.message.body.size"] == 4 * 100  # the sends' sizes only
    assert [(row.depth, row.span.name) for row in summary.folded] == [
        (1, "send /voice"),
        (2, "chunk"),
        (2, "⋯ 4 more chunk"),
        (2, "chunk"),
    ] * 4
    assert summary.hidden_spans == 28 and folded.rows[3].hidden_spans == 4
    assert [s.span_id for s in folded.every_span()] == [s.span_id for s in trace.every_span()]
    assert folded.spans == trace.spans == 1 + 6 * 7


def test_a_different_service_kind_or_subtree_breaks_a_run() -> None:
    """Identical means the same names, kinds and services at the same places, children included."""
    plain = one_trace(sends(6))
    assert any(row.folded for row in fold(plain).rows)
    for override in ({"service": "voice-server"}, {"kind": "CONSUMER"}, {"name": "send /other"}):
        broken = one_trace(sends(6, override))  # send number 2 differs: runs of 2 and 3 are left
        assert fold(broken).rows == broken.rows, override
    child = one_trace([*sends(6), span("extra", "ack", 305, "s2")])  # send number 2 has one more child
    assert fold(child).rows == child.rows
    # Attributes, sizes and timing are not part of the shape: they still fold.
    varied = one_trace(
        [span("root", "turn", 0)] + [span(f"s{i}", "send", 7 * i + 1, "root", size=i) for i in range(1, 7)]
    )
    assert names(fold(varied))[2] == (1, "⋯ 4 more send")


def test_runs_of_roots_fold_and_the_root_name_is_a_span() -> None:
    """Siblings at the top (roots whose parent is not in the file) fold too; the trace's name is a real span's."""
    spans = [span(f"o{i}", "receive /voice", 10 * i, parent="f" * 16, kind="CONSUMER") for i in range(6)]
    trace = one_trace(spans)
    folded = fold(trace)
    assert [(row.span.name, row.orphan) for row in folded.rows] == [
        ("receive /voice", True),
        ("⋯ 4 more receive /voice", False),
        ("receive /voice", True),
    ]
    assert folded.root_name == trace.root_name == "receive /voice"


def test_span_count_counts_every_span_and_sessions_come_from_hidden_ones() -> None:
    """``Trace.spans`` and the sessions of a folded trace are those of the whole trace."""
    spans = sends(8)
    session = {"websocket.session.id": "5e55" * 8}
    spans[7] = span("s3", "send /voice", 400, "root", size=640, attributes=session)  # behind the summary
    trace = one_trace(spans)
    folded = fold(trace)
    assert len(folded.rows) == 6 and folded.spans == trace.spans == 17 and folded.span_count == 17
    assert folded.sessions == trace.sessions == ("5e55" * 8,)
    assert fold(folded).spans == 17  # folding again changes no count


def test_a_folded_trace_header_counts_every_span() -> None:
    """The header of a folded trace says how many rows it shows and how many spans the trace holds."""
    trace = one_trace(sends(6))
    console = Console(record=True, width=200)
    render_terminal([fold(trace)], console)
    render_terminal([trace], console)
    folded_header, whole_header = [line for line in console.export_text().splitlines() if " ms  ·  " in line]
    assert "  ·  6 rows, 13 spans  ·  " in folded_header  # root, first, summary, last
    assert "  ·  13 spans  ·  " in whole_header


def test_rows_are_reused_and_the_input_is_unchanged() -> None:
    trace = one_trace(sends(6))
    before = trace.rows
    folded = fold(trace)
    assert trace.rows is before and trace.span_count is None
    assert folded.rows[1] is trace.rows[1] and isinstance(folded.rows[3], Row)


def test_runs_are_the_stretches_of_equal_keys() -> None:
    assert list(runs([])) == []
    assert list(runs(["a"])) == [(0, 1)]
    assert list(runs(["a", "a", "b", "a", "a", "a"])) == [(0, 2), (2, 3), (3, 6)]
