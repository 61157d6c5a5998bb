"""``wstrace view``: the terminal tree, the filters, the command, and the HTML page in a real headless Chromium."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import pytest
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Span, Tracer, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from rich.console import Console

from tests.browser import chromium_page
from wstrace.cli import main
from wstrace.cli.export import OtlpJsonFileExporter, SpanRecord, read_spans
from wstrace.cli.view import (
    Trace,
    build_traces,
    render_terminal,
    select_traces,
    service_tags,
    services_of,
    waterfall,
)
from wstrace.cli.view_html import render_html, value_type


T0 = 1_764_000_000_000_000_000
SESSION_1 = "5e5510aa" * 4
SESSION_2 = "5e5520bb" * 4
HOSTILE = '<img src=x onerror="alert(1)">[bold]x[/bold]</script>'
HANDSHAKE, MESSAGE, CLOSE, ORPHAN, ODD = "1" * 32, "2" * 32, "3" * 32, "a" * 32, "4" * 32
REPO = Path(__file__).resolve().parents[2]


class CountingIds(IdGenerator):
    """Readable ids: the n-th new trace is the digit n written 32 times; span ids count up from 0x101."""

    def __init__(self) -> None:
        self.traces = 0
        self.spans = 0x100

    def generate_trace_id(self) -> int:
        self.traces += 1
        return int(f"{self.traces:x}" * 32, 16)

    def generate_span_id(self) -> int:
        self.spans += 1
        return self.spans


def at(ms: float) -> int:
    """T0 plus ``ms`` milliseconds, in ns."""
    return T0 + round(ms * 1_000_000)


def make_span(
    tracer: Tracer,
    name: str,
    kind: SpanKind,
    start_ms: float,
    end_ms: float,
    parent: Optional[trace.Span] = None,
    attributes: Optional[dict[str, Any]] = None,
    links: tuple[Link, ...] = (),
    error: Optional[str] = None,
    events: tuple[tuple[str, float, dict[str, Any]], ...] = (),
) -> Span:
    """A finished span with explicit times, parent, attributes, links, events and status."""
    context = trace.set_span_in_context(parent) if parent is not None else Context()
    span = tracer.start_span(name, context, kind, attributes, links, start_time=at(start_ms))
    for event, when, event_attributes in events:
        span.add_event(event, event_attributes, timestamp=at(when))
    if error:
        span.set_status(Status(StatusCode.ERROR, error))
    span.end(end_time=at(end_ms))
    assert isinstance(span, Span)
    return span


def stream(chunks: int, size: int, ttfc: float, ttlc: float, mean: float, p95: float, stalls: int) -> dict[str, Any]:
    """The attributes wstrace puts on a stream span (times in seconds)."""
    return {
        "wstrace.stream.chunk_count": chunks,
        "wstrace.stream.size": size,
        "messaging.message.body.size": size,
        "wstrace.stream.time_to_first_chunk": ttfc,
        "wstrace.stream.time_to_last_chunk": ttlc,
        "wstrace.stream.chunk_interval.mean": mean,
        "wstrace.stream.chunk_interval.max": p95 * 2,
        "wstrace.stream.chunk_interval.p50": mean,
        "wstrace.stream.chunk_interval.p95": p95,
        "wstrace.stream.stalls": stalls,
    }


def write_traces(path: Path) -> None:
    """A handshake; a message with its reply streams; an abnormal close; an orphan; a hostile span name."""
    provider = TracerProvider(id_generator=CountingIds(), resource=Resource.create({"service.name": "chat"}))
    provider.add_span_processor(SimpleSpanProcessor(OtlpJsonFileExporter(path)))
    ws = provider.get_tracer("wstrace.instrumentation.websockets", "0.1.0")
    app = provider.get_tracer("chat.app", "2.0.0")
    session_1 = {"websocket.session.id": SESSION_1}
    message = {**session_1, "network.protocol.name": "websocket", "websocket.message.type": "text"}

    shake = {**session_1, "http.response.status_code": 101, "websocket.envelope": "frame"}
    client = make_span(
        ws, "GET /chat", SpanKind.CLIENT, 0, 1.0, attributes={**shake, "url.full": "ws://127.0.0.1/chat"}
    )
    make_span(ws, "GET /chat", SpanKind.SERVER, 0.4, 0.8, client, {**shake, "http.route": "/chat"})
    to_handshake = (Link(client.get_span_context(), {"wstrace.link.kind": "handshake"}),)

    ask = make_span(app, "ask #1", SpanKind.INTERNAL, 2.0, 12.0)
    one = {**message, "websocket.message.ordinal": 1, "messaging.message.body.size": 10}
    send = make_span(ws, "send /chat", SpanKind.PRODUCER, 2.1, 2.3, ask, one, to_handshake)
    receive = make_span(ws, "receive /chat", SpanKind.CONSUMER, 2.5, 11.0, send, one, to_handshake)
    stall = ("wstrace.stream.stall", 9.0, {"wstrace.stream.stall.duration": 1.25, "wstrace.stream.chunk.index": 7})
    reply = {**message, "websocket.message.ordinal": 1, **stream(12, 1234, 0.0005, 0.0075, 0.00064, 0.0012, 1)}
    out = make_span(ws, "send /chat", SpanKind.PRODUCER, 3.0, 10.0, receive, reply, to_handshake, events=(stall,))
    back = {**message, "websocket.message.ordinal": 1, **stream(12, 1234, 0.0011, 0.0081, 0.00065, 0.0013, 0)}
    make_span(ws, "receive /chat", SpanKind.CONSUMER, 3.2, 10.5, out, back, to_handshake)

    closed = {**session_1, "websocket.close.code": 1006, "error.type": "close 1006"}
    make_span(ws, "close /chat", SpanKind.INTERNAL, 20.0, 20.01, None, closed, to_handshake, "abnormal close")

    remote = SpanContext(int(ORPHAN, 16), 0xDEAD, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    third = {"websocket.session.id": SESSION_2, "websocket.message.ordinal": 3, "messaging.message.body.size": 64}
    orphan = make_span(ws, "receive /chat", SpanKind.CONSUMER, 30.0, 34.0, NonRecordingSpan(remote), third)
    chat = {"gen_ai.operation.name": "chat", "gen_ai.request.stream": True, **stream(40, 160, 0.12, 2.9, 0.07, 0.09, 0)}
    make_span(app, "chat my-model", SpanKind.CLIENT, 30.5, 33.5, orphan, chat)

    hostile = {"websocket.session.id": SESSION_2, "note": "</script><script>alert(2)</script>", "n": (1, 2)}
    make_span(app, HOSTILE, SpanKind.INTERNAL, 40.0, 41.0, None, hostile)
    provider.shutdown()


@pytest.fixture(scope="module")
def trace_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("view") / "traces.jsonl"
    write_traces(path)
    return path


@pytest.fixture(scope="module")
def traces(trace_file: Path) -> list[Trace]:
    return build_traces(read_spans(trace_file))


def render(traces: list[Trace], width: int = 160, **console: Any) -> str:
    """The terminal view as plain text."""
    out = io.StringIO()
    render_terminal(traces, Console(file=out, width=width, color_system=None, **console))
    return out.getvalue()


ROW = re.compile(
    r"^(?P<indent> *)(?P<orphan>⋯ )?(?P<name>.+?) +(?P<kind>internal|server|client|producer|consumer)"
    r" +\+(?P<start>[\d,.]+) +(?P<duration>[\d,.]+)  (?P<rest>.*)$"
)


def sections(text: str) -> dict[str, list[re.Match[str]]]:
    """The rendered output as {trace id: its span rows}, in order."""
    found: dict[str, list[re.Match[str]]] = {}
    current: list[re.Match[str]] = []
    for line in text.splitlines():
        if line.startswith("trace "):
            current = found.setdefault(line.split()[1], [])
        elif (row := ROW.match(line)) is not None:
            current.append(row)
    return found


def tree(rows: list[re.Match[str]]) -> list[tuple[int, str]]:
    """(depth, name) of each row."""
    return [(len(row["indent"]) // 2, row["name"]) for row in rows]


def test_trace_sections_are_in_start_order(traces: list[Trace]) -> None:
    """One section per trace, sorted by start time, with root name, duration and span count."""
    text = render(traces)
    assert list(sections(text)) == [HANDSHAKE, MESSAGE, CLOSE, ORPHAN, ODD]
    headers = [line for line in text.splitlines() if line.startswith("trace ")]
    assert headers[1].split(None, 2)[2].strip() == "ask #1"
    facts = text.splitlines()[text.splitlines().index(headers[1]) + 1]
    assert "10.00 ms" in facts and "5 spans" in facts and f"session {SESSION_1}" in facts
    assert "2025-11-24 16:00:00.002 UTC" in facts  # T0 + 2 ms


def test_span_tree_has_the_right_depths(traces: list[Trace]) -> None:
    """Each span appears once, indented two spaces per level under its parent."""
    found = sections(render(traces))
    assert tree(found[HANDSHAKE]) == [(0, "GET /chat"), (1, "GET /chat")]
    assert tree(found[MESSAGE]) == [
        (0, "ask #1"),
        (1, "send /chat"),
        (2, "receive /chat"),
        (3, "send /chat"),
        (4, "receive /chat"),
    ]
    assert tree(found[CLOSE]) == [(0, "close /chat")]
    assert tree(found[ORPHAN]) == [(0, "receive /chat"), (1, "chat my-model")]
    assert tree(found[ODD]) == [(0, HOSTILE)]  # rich markup in a name is text, not markup
    assert sum(len(rows) for rows in found.values()) == len([r for t in traces for r in t.rows]) == 11


def test_rows_show_offsets_durations_bars_and_key_attributes(traces: list[Trace]) -> None:
    """Offsets from the trace start and durations in ms, a waterfall scaled to the trace, curated attributes."""
    rows = sections(render(traces))[MESSAGE]
    assert [(r["start"], r["duration"]) for r in rows] == [
        ("0.00", "10.00"),
        ("0.10", "0.20"),
        ("0.50", "8.50"),
        ("1.00", "7.00"),
        ("1.20", "7.30"),
    ]
    bar_width = 40  # a quarter of the 160 columns
    assert rows[0]["rest"].startswith("█" * bar_width + " ")  # the root spans the whole trace
    assert rows[3]["rest"].startswith(" " * 4 + "█" * 28 + " " * 8)  # 1.0-8.0 ms of 10 ms, in 40 cells
    assert "links=1 ordinal=1 size=1234" in rows[3]["rest"]
    handshake = sections(render(traces))[HANDSHAKE][0]["rest"]
    assert "envelope=frame" in handshake and "status_code=101" in handshake
    assert "gen_ai.operation=chat" in sections(render(traces))[ORPHAN][1]["rest"]


def test_error_spans_are_marked_red(traces: list[Trace]) -> None:
    """An ERROR span shows its status message and error.type, its name in red."""
    [row] = sections(render(traces))[CLOSE]
    assert "close_code=1006 error.type=close 1006 ERROR: abnormal close" in row["rest"]
    out = io.StringIO()
    render_terminal(traces, Console(file=out, width=160, force_terminal=True, color_system="standard"))
    [line] = [line for line in out.getvalue().splitlines() if "close /chat" in line and "internal" in line]
    assert "\x1b[1;31mclose /chat\x1b[0m" in line and "\x1b[1;31mERROR: abnormal close" in line
    assert "\x1b[1;31m" not in next(line for line in out.getvalue().splitlines() if "ask #1" in line)


def test_orphans_are_roots_with_a_marker(traces: list[Trace]) -> None:
    """A span whose parent is not in the file is a root of its trace, marked, with a legend."""
    text = render(traces)
    found = sections(text)
    assert found[ORPHAN][0]["orphan"] and not found[ORPHAN][1]["orphan"]
    assert [trace_id for trace_id, rows in found.items() if any(row["orphan"] for row in rows)] == [ORPHAN]
    assert text.count("⋯ parent span not in the file") == 1
    assert next(t for t in traces if t.trace_id == ORPHAN).root_name == "receive /chat"


def test_stream_table_rows(traces: list[Trace]) -> None:
    """Every span with wstrace.stream.chunk_count gets a row: chunks, bytes, TTFC, TTLC, mean, p95, stalls."""
    text = render(traces)
    lines = text.splitlines()
    tables = [i for i, line in enumerate(lines) if line.strip() == "streams"]
    assert len(tables) == 2  # the message trace and the orphan's trace
    header = lines[tables[0] + 1].split()
    assert header == ["span", "chunks", "bytes", "TTFC", "ms", "TTLC", "ms", "mean", "ms", "p95", "ms", "stalls"]

    def row(line: str) -> tuple[str, list[str]]:
        words = line.split()
        return " ".join(words[:-7]), words[-7:]

    assert [row(line) for line in lines[tables[0] + 2 : tables[0] + 4]] == [
        ("send /chat", ["12", "1,234", "0.50", "7.50", "0.64", "1.20", "1"]),
        ("receive /chat", ["12", "1,234", "1.10", "8.10", "0.65", "1.30", "0"]),
    ]
    assert row(lines[tables[1] + 2]) == ("chat my-model", ["40", "160", "120.00", "2,900.00", "70.00", "90.00", "0"])


def test_filters_select_traces(traces: list[Trace]) -> None:
    """--trace matches an id prefix; --session selects every trace with a span of that session."""
    assert [t.trace_id for t in select_traces(traces, trace="2222")] == [MESSAGE]
    assert [t.trace_id for t in select_traces(traces, trace=MESSAGE.upper())] == [MESSAGE]
    assert [t.trace_id for t in select_traces(traces, session=SESSION_1)] == [HANDSHAKE, MESSAGE, CLOSE]
    assert [t.trace_id for t in select_traces(traces, session=SESSION_2[:8])] == [ORPHAN, ODD]
    assert [t.trace_id for t in select_traces(traces, trace="a", session=SESSION_2)] == [ORPHAN]
    assert select_traces(traces, trace="f") == [] and select_traces(traces, session="0000") == []
    assert list(sections(render(select_traces(traces, session=SESSION_2)))) == [ORPHAN, ODD]


def test_waterfall_scales_to_the_trace() -> None:
    """Bars start and end at their share of the width, at least one cell, a thin mark for zero length."""
    assert waterfall(25, 75, 0, 100, 20) == " " * 5 + "█" * 10 + " " * 5
    assert waterfall(0, 100, 0, 100, 10) == "█" * 10
    assert waterfall(99, 100, 0, 100, 10) == " " * 9 + "█"
    assert waterfall(50, 50, 0, 100, 10) == " " * 5 + "▏" + " " * 4
    assert waterfall(0, 0, 0, 0, 4) == "█   "


def test_cycles_and_duplicates_still_render_every_span() -> None:
    """Spans in a parent cycle (or their own parent) become orphan roots; none is lost, none shown twice."""

    def record(span_id: str, parent: Optional[str], start: int) -> SpanRecord:
        return SpanRecord("f" * 32, span_id, parent, f"span {span_id}", "INTERNAL", start, start + 10)

    spans = [record("01", "02", 0), record("02", "01", 1), record("03", "03", 2), record("04", "03", 3)]
    spans += [record("04", "03", 3)]  # the same span, exported twice
    [cyclic] = build_traces(spans)
    assert [(r.span.span_id, r.depth, r.orphan) for r in cyclic.rows] == [
        ("03", 0, True),
        ("04", 1, False),
        ("01", 0, True),
        ("02", 1, False),
    ]


def test_command_renders_and_filters(trace_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`wstrace view FILE --session ID --width N` prints the selected traces and a summary."""
    assert main(["view", str(trace_file), "--session", SESSION_2, "--width", "150"]) == 0
    out = capsys.readouterr().out
    assert list(sections(out)) == [ORPHAN, ODD]
    assert max(len(line) for line in out.splitlines()) <= 150
    assert "3 spans in 2 traces" in out
    assert main(["view", str(trace_file), "--trace", "3333", "--width", "150"]) == 0
    assert list(sections(capsys.readouterr().out)) == [CLOSE]


def test_command_errors(tmp_path: Path, trace_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A missing file, a file with no spans, and a filter matching nothing exit 1 with a clear message."""
    assert main(["view", str(tmp_path / "missing.jsonl")]) == 1
    assert "missing.jsonl: no such file" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["view", str(empty)]) == 1
    assert "empty.jsonl holds no spans" in capsys.readouterr().err
    empty.write_text("garbage\n\n")
    assert main(["view", str(empty)]) == 1
    assert "holds no spans (skipped 1 corrupt line)" in capsys.readouterr().err
    assert main(["view", str(tmp_path)]) == 1
    assert "cannot read" in capsys.readouterr().err
    assert main(["view", str(trace_file), "--trace", "ffff"]) == 1
    assert "no trace in" in (err := capsys.readouterr().err) and "matches --trace ffff (5 traces)" in err


def test_command_without_the_cli_extra(
    trace_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without rich, `wstrace view` says which extra to install instead of a traceback."""
    import wstrace.cli  # noqa: PLC0415 - the package whose submodule is made unimportable

    for name in [name for name in sys.modules if name.startswith("rich.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "rich", None)  # what `import rich` meets when rich is not installed
    monkeypatch.delitem(sys.modules, "wstrace.cli.view")
    monkeypatch.delattr(wstrace.cli, "view")
    assert main(["view", str(trace_file)]) == 1
    err = capsys.readouterr().err
    assert "the command line needs the cli extra (rich" in err and "pip install 'wstrace[cli]'" in err


def test_command_reports_skipped_lines(tmp_path: Path, trace_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Corrupt lines are skipped, and the summary says how many."""
    damaged = tmp_path / "damaged.jsonl"
    damaged.write_text(trace_file.read_text(encoding="utf-8") + '{"resourceSpans": [tor\n\n', encoding="utf-8")
    assert main(["view", str(damaged), "--width", "160"]) == 0
    assert "11 spans in 5 traces (skipped 1 corrupt line)" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------------
# Folding (the fold itself: test_fold.py)

RUN = 40  # identical sends in the long run


def write_long_run(path: Path) -> dict[str, str]:
    """A turn sending RUN identical frames (each received by the server), then an ack linking to a hidden frame;
    and a one-span trace. Returns span ids: "first", "hidden" (frame 20), "hidden receive", "last", "ack"."""
    device = TracerProvider(id_generator=CountingIds(), resource=Resource.create({"service.name": "device"}))
    device.add_span_processor(SimpleSpanProcessor(OtlpJsonFileExporter(path)))
    ws = device.get_tracer("wstrace.instrumentation.websockets", "0.1.0")
    turn = make_span(ws, "voice turn", SpanKind.INTERNAL, 0, 100)
    frame = {"messaging.message.body.size": 640, "websocket.session.id": SESSION_1}
    ids: dict[str, str] = {}
    for i in range(RUN):
        send = make_span(ws, "send /voice", SpanKind.PRODUCER, 1 + 2 * i, 2 + 2 * i, turn, frame)
        receive = make_span(ws, "receive /voice", SpanKind.CONSUMER, 1.2 + 2 * i, 1.8 + 2 * i, send, frame)
        if i in (0, 20, RUN - 1):
            ids[{0: "first", 20: "hidden", RUN - 1: "last"}[i]] = f"{send.get_span_context().span_id:016x}"
        if i == 20:
            ids["hidden receive"] = f"{receive.get_span_context().span_id:016x}"
            to_frame = (Link(send.get_span_context(), {"wstrace.link.kind": "inbound"}),)
    ack = make_span(ws, "ack", SpanKind.INTERNAL, 90, 91, turn, links=to_frame)
    ids["ack"] = f"{ack.get_span_context().span_id:016x}"
    make_span(ws, "lonely", SpanKind.INTERNAL, 200, 201)
    device.shutdown()
    return ids


@pytest.fixture(scope="module")
def long_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    path = tmp_path_factory.mktemp("fold") / "run.jsonl"
    return path, write_long_run(path)


def test_command_folds_long_runs_unless_no_fold(
    long_run: tuple[Path, dict[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    """`wstrace view` shows a run's first and last subtree and one summary row between; --no-fold every span."""
    path, _ = long_run
    total = 1 + 2 * RUN + 1 + 1
    assert main(["view", str(path), "--width", "200"]) == 0
    out = capsys.readouterr().out
    folded = sections(out)["1" * 32]
    assert tree(folded) == [
        (0, "voice turn"),
        (1, "send /voice"),
        (2, "receive /voice"),
        (1, f"{RUN - 2} more send /voice ({2 * (RUN - 2)} spans)"),  # after "⋯ "
        (1, "send /voice"),
        (2, "receive /voice"),
        (1, "ack"),
    ]
    summary = folded[3]
    assert (summary["start"], summary["duration"]) == ("3.00", "75.00")  # frames 1 (from 3 ms) to 38 (to 78 ms)
    assert f"size={(RUN - 2) * 640}" in summary["rest"]
    assert f"7 rows, {total - 1} spans" in out  # the header counts every span of the trace
    assert f"{total} spans in 2 traces" in out

    assert main(["view", str(path), "--width", "200", "--no-fold"]) == 0
    out = capsys.readouterr().out
    whole = sections(out)["1" * 32]
    assert len(whole) == total - 1 and "more" not in out
    assert f"  ·  {total - 1} spans" in out and f"{total} spans in 2 traces" in out


# ---------------------------------------------------------------------------------------------------------
# HTML


def data_block(page: str) -> Any:
    """The JSON embedded in the page."""
    start = page.index('<script type="application/json" id="wstrace-data">') + len(
        '<script type="application/json" id="wstrace-data">'
    )
    return json.loads(page[start : page.index("</script>", start)])


def test_html_is_self_contained_and_escaped(traces: list[Trace]) -> None:
    """No external URL, no raw markup from span data, and the embedded JSON reads back."""
    page = render_html(traces, source='my "traces" <1>.jsonl')
    data = data_block(page)
    markup = page.replace(json.dumps(data, ensure_ascii=False).replace("<", "\\u003c"), "")
    assert len(markup) < len(page)  # the data block is exactly the JSON, with every "<" escaped
    assert re.search(r"\b(src|href)\s*=", markup) is None and "http://" not in page and "https://" not in page
    assert "url(" not in markup and "@import" not in markup
    assert page.count("</script>") == 2 and page.count("<script") == 2  # the data block and the code
    assert "<img" not in page and "alert(2)</script>" not in page
    assert "<title>wstrace · my &quot;traces&quot; &lt;1&gt;.jsonl</title>" in page
    assert [t["traceId"] for t in data["traces"]] == [HANDSHAKE, MESSAGE, CLOSE, ORPHAN, ODD]
    odd = data["traces"][4]["spans"][0]
    assert odd["name"] == HOSTILE
    assert ["note", "string", "</script><script>alert(2)</script>"] in odd["attributes"]
    assert ["n", "array", "[1, 2]"] in odd["attributes"]
    stream_span = data["traces"][1]["spans"][3]
    assert (stream_span["left"], stream_span["width"]) == (10.0, 70.0)
    assert stream_span["events"][0]["name"] == "wstrace.stream.stall"


def test_html_command_writes_the_page(trace_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--html OUT` writes the page for the selected traces instead of printing them."""
    out = tmp_path / "view.html"
    assert main(["view", str(trace_file), "--trace", "2", "--html", str(out)]) == 0
    assert f"wrote {out}: 1 trace, 5 spans" in capsys.readouterr().out
    assert [t["traceId"] for t in data_block(out.read_text(encoding="utf-8"))["traces"]] == [MESSAGE]


def test_html_page_in_headless_chromium(trace_file: Path, tmp_path: Path) -> None:
    """The page shows every span, opens a span's details on click, follows links, and logs no error."""
    from playwright.sync_api import expect  # noqa: PLC0415 - optional: see tests/browser.py

    started = time.monotonic()
    spans = read_spans(trace_file)
    page_file = tmp_path / "view.html"
    assert main(["view", str(trace_file), "--html", str(page_file)]) == 0
    problems: list[str] = []
    with chromium_page("the HTML view test", tmp_path / "profile", 1280, problems) as page:
        page.on("dialog", lambda dialog: (problems.append(f"dialog: {dialog.message}"), dialog.dismiss()))
        page.goto(page_file.as_uri())
        expect(page.locator(".row")).to_have_count(len(spans))
        assert sorted(page.locator(".row .name").all_inner_texts()) == sorted(s.name for s in spans)
        assert page.locator("section.trace").count() == 5 and page.locator("img").count() == 0

        close = next(s for s in spans if s.name == "close /chat")
        row = page.locator(f'.row[data-span-id="{close.span_id}"]')
        panel = row.locator("xpath=following-sibling::div[1]")
        expect(panel).to_be_hidden()
        row.click()
        expect(panel).to_be_visible()
        expect(row).to_have_attribute("aria-expanded", "true")
        key = page.locator("td.key", has_text=re.compile(r"^websocket\.close\.code$"))
        code = panel.locator("tr").filter(has=key)
        expect(code.locator("td.value")).to_be_visible()
        expect(code.locator("td.value")).to_have_text("1006")
        expect(panel).to_contain_text("ERROR: abnormal close")

        # The stream span: its stall event with the event's attributes, and its link to the handshake.
        reply = next(s for s in spans if s.name == "send /chat" and "wstrace.stream.chunk_count" in s.attributes)
        reply_row = page.locator(f'.row[data-span-id="{reply.span_id}"]')
        reply_row.click()
        reply_panel = reply_row.locator("xpath=following-sibling::div[1]")
        expect(reply_panel.locator(".event-name")).to_have_text("wstrace.stream.stall")
        expect(reply_panel).to_contain_text("wstrace.stream.stall.duration")
        expect(reply_panel).to_contain_text("wstrace.stream.chunk_count")
        handshake_row = page.locator(f'.row[data-span-id="{reply.links[0].span_id}"]')
        expect(handshake_row).to_have_attribute("aria-expanded", "false")
        reply_panel.get_by_role("button", name="show span").click()
        expect(handshake_row).to_have_attribute("aria-expanded", "true")

        # Untrusted text is text: the hostile name is shown as typed and ran nothing.
        expect(page.locator(".row .name", has_text="onerror")).to_have_text(HOSTILE)
        odd = page.locator(".row", has_text="onerror")
        odd.click()
        expect(odd.locator("xpath=following-sibling::div[1]")).to_contain_text("</script><script>alert(2)</script>")

        (REPO / "build").mkdir(exist_ok=True)
        page.screenshot(path=str(REPO / "build" / "view-screenshot.png"), full_page=True)
    assert problems == []
    assert time.monotonic() - started < 20


def test_html_folds_long_runs_into_a_summary_that_holds_them(
    long_run: tuple[Path, dict[str, str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The page's summary row carries the hidden rows; counts are of every span, and 1 span is "1 span"."""
    path, ids = long_run
    total = 1 + 2 * RUN + 1 + 1
    out = tmp_path / "run.html"
    assert main(["view", str(path), "--html", str(out)]) == 0
    assert f"wrote {out}: 2 traces, {total} spans" in capsys.readouterr().out
    page = out.read_text(encoding="utf-8")
    assert f'<p class="summary">run.jsonl · 2 traces · {total} spans</p>' in page
    turn, lonely = data_block(page)["traces"]
    assert (turn["spanCount"], lonely["spanCount"]) == (total - 1, 1)
    assert [entry["name"] for entry in turn["spans"]][3] == f"⋯ {RUN - 2} more send /voice ({2 * (RUN - 2)} spans)"
    summary = turn["spans"][3]
    assert (summary["hiddenSpans"], summary["size"], summary["depth"]) == (2 * (RUN - 2), (RUN - 2) * 640, 1)
    assert (summary["offsetMs"], summary["durationMs"]) == (3.0, 75.0)
    assert "spanId" not in summary and len(turn["spans"]) == 7
    assert ids["hidden"] in [entry.get("spanId") for entry in summary["folded"]]
    assert [len(entry.get("folded", ())) for entry in summary["folded"]] == [0] * 2 * (RUN - 2)
    [ack] = [entry for entry in turn["spans"] if entry["name"] == "ack"]
    assert ack["links"][0]["spanId"] == ids["hidden"] and ack["links"][0]["inPage"]

    assert main(["view", str(path), "--trace", "2", "--html", str(out)]) == 0
    assert f"wrote {out}: 1 trace, 1 span\n" in capsys.readouterr().out
    assert '<p class="summary">run.jsonl · 1 trace · 1 span</p>' in out.read_text(encoding="utf-8")

    assert main(["view", str(path), "--no-fold", "--html", str(out)]) == 0
    assert f"wrote {out}: 2 traces, {total} spans" in capsys.readouterr().out
    turn, _ = data_block(out.read_text(encoding="utf-8"))["traces"]
    assert len(turn["spans"]) == total - 1 and not any("folded" in entry for entry in turn["spans"])


def test_html_folded_run_expands_in_headless_chromium(long_run: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    """A folded run is one visible summary row; a click (or Enter) shows and hides its rows, with no network
    and nothing the page's Content-Security-Policy refuses; a link to a hidden span opens the fold."""
    from playwright.sync_api import expect  # noqa: PLC0415 - optional: see tests/browser.py

    path, ids = long_run
    total = 1 + 2 * RUN + 1 + 1
    folded_file, whole_file = tmp_path / "folded.html", tmp_path / "whole.html"
    assert main(["view", str(path), "--html", str(folded_file)]) == 0
    assert main(["view", str(path), "--html", str(whole_file), "--no-fold"]) == 0
    problems: list[str] = []
    with chromium_page("the HTML view test", tmp_path / "profile", 1280, problems) as page:
        pages = {folded_file.as_uri(), whole_file.as_uri()}
        page.on("request", lambda r: problems.append(f"request {r.url}") if r.url not in pages else None)
        page.goto(folded_file.as_uri())

        summary = page.locator(".row.fold")
        expect(summary).to_have_count(1)
        expect(summary).to_be_visible()
        expect(summary).to_contain_text(f"{RUN - 2} more send /voice ({2 * (RUN - 2)} spans)")
        expect(summary).to_contain_text(f"size={(RUN - 2) * 640}")
        expect(summary).to_contain_text("+3.000 ms · 75.000 ms")
        expect(summary).to_have_attribute("aria-expanded", "false")
        hidden = page.locator(f'.row[data-span-id="{ids["hidden"]}"]')
        hidden_receive = page.locator(f'.row[data-span-id="{ids["hidden receive"]}"]')
        expect(page.locator(".row")).to_have_count(total + 1)  # every span is in the page, and the summary
        expect(page.locator(".row:visible")).to_have_count(7 + 1)  # the folded turn, and the lonely span
        expect(hidden).to_be_hidden()
        expect(hidden_receive).to_be_hidden()
        for shown in ("first", "last", "ack"):
            expect(page.locator(f'.row[data-span-id="{ids[shown]}"]')).to_be_visible()
        facts = page.locator(".trace-head .facts")
        expect(facts.nth(0)).to_contain_text(f"  ·  {total - 1} spans  ·  session {SESSION_1}")
        expect(facts.nth(1)).to_have_text(re.compile(r"  ·  1 span$"))
        expect(page.locator("header .summary")).to_have_text(f"run.jsonl · 2 traces · {total} spans")

        summary.click()
        expect(summary).to_have_attribute("aria-expanded", "true")
        expect(hidden).to_be_visible()
        expect(hidden_receive).to_be_visible()
        expect(page.locator(".row:visible")).to_have_count(total + 1)
        hidden.click()  # a hidden span's row, once shown, opens its own details
        expect(hidden.locator("xpath=following-sibling::div[1]")).to_be_visible()
        expect(hidden.locator("xpath=following-sibling::div[1]")).to_contain_text("messaging.message.body.size")

        summary.focus()
        page.keyboard.press("Enter")
        expect(summary).to_have_attribute("aria-expanded", "false")
        expect(hidden).to_be_hidden()
        expect(page.locator(".row:visible")).to_have_count(7 + 1)

        ack = page.locator(f'.row[data-span-id="{ids["ack"]}"]')
        ack.click()
        ack.locator("xpath=following-sibling::div[1]").get_by_role("button", name="show span").click()
        expect(summary).to_have_attribute("aria-expanded", "true")
        expect(hidden).to_be_visible()
        expect(hidden).to_have_attribute("aria-expanded", "true")
        (REPO / "build").mkdir(exist_ok=True)
        page.screenshot(path=str(REPO / "build" / "view-fold-screenshot.png"), full_page=True)

        page.goto(whole_file.as_uri())
        expect(page.locator(".row")).to_have_count(total)
        expect(page.locator(".row:visible")).to_have_count(total)
        expect(page.locator(".row.fold")).to_have_count(0)
    assert problems == []


# ---------------------------------------------------------------------------------------------------------
# Two services, narrow terminals, piped output, wide pages

SERVICES = {"voice-device": "device", "voice-server": "server"}  # each service and its tag in the terminal
NUMBER_CUT = re.compile(r"\d…|…\d|[\d,.]…")


def write_voice(path: Path) -> None:
    """A voice turn at real-time scale, traced by a device and a server writing one file (figures like
    3,804.12 ms that a narrow table used to cut); a heartbeat trace whose run of 12 sends folds; an error close
    12 s in. Every span's start and duration are distinct."""
    ids = CountingIds()
    providers = [
        TracerProvider(id_generator=ids, resource=Resource.create({"service.name": name})) for name in SERVICES
    ]
    for provider in providers:
        provider.add_span_processor(SimpleSpanProcessor(OtlpJsonFileExporter(path)))
    device, server = (provider.get_tracer("wstrace.instrumentation.websockets", "0.1.0") for provider in providers)
    up = {"websocket.message.ordinal": 1, "messaging.message.body.size": 62754}
    turn = make_span(device, "voice turn", SpanKind.INTERNAL, 0, 3804.12)
    send = make_span(device, "send /voice", SpanKind.PRODUCER, 22.57, 1962.31, turn, up)
    receive = make_span(server, "receive /voice", SpanKind.CONSUMER, 23.74, 1963.77, send, up)
    process = make_span(server, "process turns", SpanKind.CONSUMER, 1964.14, 3801.86, receive)
    agent = {"gen_ai.operation.name": "invoke_agent"}
    invoke = make_span(server, "invoke_agent voice-assistant", SpanKind.INTERNAL, 1964.4, 3801.48, process, agent)
    stage = {"gen_ai.operation.name": "speech_to_text"}
    make_span(server, "speech_to_text sim-asr", SpanKind.CLIENT, 1965.11, 2125.66, invoke, stage)
    chat = {"gen_ai.operation.name": "chat", **stream(16, 75, 0.37208, 0.83224, 0.03068, 0.04839, 0)}
    make_span(server, "chat sim-llm", SpanKind.CLIENT, 2126.41, 2958.8, invoke, chat)
    speech = {"gen_ai.operation.name": "text_to_speech", **stream(104, 133120, 0.08162, 1.05538, 0.00945, 0.0088, 0)}
    make_span(server, "text_to_speech sim-tts", SpanKind.CLIENT, 2770.62, 3826.36, invoke, speech)
    audio = {"websocket.message.ordinal": 1, **stream(105, 133311, 0.88862, 1.86281, 0.00937, 0.00879, 0)}
    reply = make_span(server, "send /voice", SpanKind.PRODUCER, 2852.38, 3826.74, receive, audio)
    make_span(device, "receive /voice", SpanKind.CONSUMER, 2853.74, 3827.12, reply, audio)

    beat = make_span(device, "heartbeats", SpanKind.INTERNAL, 4000, 16345.67)
    for i in range(12):
        ping = make_span(device, "send /voice", SpanKind.PRODUCER, 4001 + 1000.5 * i, 4001.25 + 1000.5 * i, beat)
        make_span(server, "receive /voice", SpanKind.CONSUMER, 4001.5 + 1000.5 * i, 4002.1 + 1000.5 * i, ping)
    closed = {"websocket.close.code": 1006, "error.type": "close 1006"}
    make_span(server, "close /voice", SpanKind.INTERNAL, 16345.6, 16347.04, None, closed, error="abnormal close")
    for provider in providers:
        provider.shutdown()


@pytest.fixture(scope="module")
def voice_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("voice") / "voice.jsonl"
    write_voice(path)
    return path


def piped(*args: str, columns: int) -> str:
    """``wstrace ARGS``'s standard output through a pipe (not a terminal), ``COLUMNS`` set."""
    environment = {**os.environ, "COLUMNS": str(columns), "PYTHONIOENCODING": "utf-8"}
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        environment.pop(name, None)
    done = subprocess.run(
        [sys.executable, "-m", "wstrace.cli", *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=environment,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def assert_readable(text: str, columns: int) -> None:
    """No line wider than the terminal, and nothing cut with an ellipsis: no number, no name."""
    assert "\x1b[" not in text  # piped: no colour codes
    too_wide = [line for line in text.splitlines() if len(line) > columns]
    assert too_wide == [], f"lines wider than {columns} columns"
    assert NUMBER_CUT.search(text) is None and "…" not in text, text


def span_row(text: str, span: SpanRecord, origin_ns: int) -> str:
    """The one line of ``span``'s trace section showing its start offset and duration, in full, side by side."""
    section = text.split(f"trace {span.trace_id}", 1)[1].split("\ntrace ", 1)[0]
    start = f"+{(span.start_ns - origin_ns) / 1e6:,.2f}"
    duration = f"{span.duration_ns / 1e6:,.2f}"
    pattern = re.compile(rf"(?<![\d,.+]){re.escape(start)} +{re.escape(duration)}(?![\d,.])")
    lines = [line for line in section.splitlines() if pattern.search(line)]
    assert len(lines) == 1, (span.name, start, duration, section)
    return lines[0]


@pytest.mark.parametrize("columns", [80, 200])
def test_piped_terminal_view_keeps_every_figure_and_names_services(voice_file: Path, columns: int) -> None:
    """`wstrace view FILE | …` at 80 and 200 columns: every start, duration and count in full, each span's
    service on its row, no line wider than the terminal, and an error still says so."""
    spans = read_spans(voice_file)
    traces = build_traces(spans)
    origin = {t.trace_id: t.start_ns for t in traces}
    whole = piped("view", str(voice_file), "--no-fold", columns=columns)
    assert_readable(whole, columns)
    for span in spans:
        row = span_row(whole, span, origin[span.trace_id])
        tags = {tag for tag in SERVICES.values() if re.search(rf"(?<![\w-]){tag}(?![\w-])", row)}
        assert tags == {SERVICES[str(span.resource["service.name"])]}, row
    for each in traces:
        assert f"  ·  {each.duration_ns / 1e6:,.2f} ms  ·  " in whole
    assert "services voice-device, voice-server" in whole  # the tags' full names
    assert "ERROR: abnormal close" in whole
    assert f"{len(spans)} spans in 3 traces" in whole

    folded = piped("view", str(voice_file), columns=columns)
    assert_readable(folded, columns)
    assert "⋯ 10 more send /voice (20 spans)" in folded
    assert "6 rows, 25 spans" in folded and f"{len(spans)} spans in 3 traces" in folded
    summary = next(line for line in folded.splitlines() if "10 more send /voice" in line)
    assert re.search(r"(?<![\w-])device(?![\w-])", summary) and re.search(r"\+1,001\.50 +9,005\.60 ", summary)
    assert "12,345.67 ms" in folded and "3,827.12 ms" in folded


def test_terminal_view_stays_readable_when_narrow(voice_file: Path) -> None:
    """Down to 60 columns nothing is cut: less important columns make way first."""
    for columns in (60, 100, 120, 160):
        assert_readable(piped("view", str(voice_file), "--no-fold", columns=columns), columns)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """A one-turn `wstrace demo` piped at 80 columns: its trace file, its page (--html) and its output."""
    directory = tmp_path_factory.mktemp("demo")
    out, page = directory / "demo.jsonl", directory / "demo.html"
    text = piped("demo", "--turns", "1", "--speed", "20", "--out", str(out), "--html", str(page), columns=80)
    return out, page, text


def test_demo_waterfall_piped_at_80_columns(demo_run: tuple[Path, Path, str]) -> None:
    """The demo's waterfall (the viewer's) fits 80 columns, cuts nothing and names each span's service."""
    out, _, text = demo_run
    assert_readable(text, 80)
    spans = read_spans(out)
    origin = {t.trace_id: t.start_ns for t in build_traces(spans)}
    waterfall_text = text.split("the conversation's traces", 1)[1]
    for span in spans:  # one turn makes no run to fold
        row = span_row(waterfall_text, span, origin[span.trace_id])
        tags = {tag for tag in SERVICES.values() if re.search(rf"(?<![\w-]){tag}(?![\w-])", row)}
        assert tags == {SERVICES[str(span.resource["service.name"])]}, row


# Every visible row's "start · duration" cell, measured: the text inside its cell, the cell not scrolled, the
# text inside its trace's section and the viewport. Returns what is not.
CUT_CELLS = """() => {
  const found = [];
  const viewport = document.documentElement.clientWidth;
  for (const row of document.querySelectorAll(".row")) {
    if (!row.getClientRects().length) continue;
    const cell = row.querySelector(".time");
    const range = document.createRange();
    range.selectNodeContents(cell);
    const text = range.getBoundingClientRect(), box = cell.getBoundingClientRect();
    const section = row.closest("section").getBoundingClientRect();
    if (cell.scrollWidth > cell.clientWidth || text.left < box.left || text.right > box.right
        || text.right > section.right || text.right > viewport) {
      found.push(cell.textContent + " text " + text.left + "-" + text.right + " cell " + box.left + "-" + box.right);
    }
  }
  return found;
}"""


def test_html_time_and_service_in_headless_chromium(
    demo_run: tuple[Path, Path, str], voice_file: Path, tmp_path: Path
) -> None:
    """At 1400 and 1920 px, every row's "start · duration" is in full view and each span's service is named,
    on the page of `wstrace demo --html` and on that of `wstrace view --html` (big figures, a fold open)."""
    from playwright.sync_api import expect  # noqa: PLC0415 - optional: see tests/browser.py

    demo_file, demo_page, _ = demo_run
    voice_page = tmp_path / "voice.html"
    assert main(["view", str(voice_file), "--html", str(voice_page)]) == 0
    problems: list[str] = []
    with chromium_page("the HTML view test", tmp_path / "profile", 1400, problems) as page:
        for width in (1400, 1920):
            page.set_viewport_size({"width": width, "height": 900})
            for trace_file, page_file in ((demo_file, demo_page), (voice_file, voice_page)):
                spans = read_spans(trace_file)
                page.goto(page_file.as_uri())
                expect(page.locator(".row[data-span-id]")).to_have_count(len(spans))
                for summary in page.locator(".row.fold").all():
                    summary.click()  # the hidden rows' figures count too
                assert page.evaluate(CUT_CELLS) == [], (width, page_file.name)
                shown = dict(
                    zip(
                        page.locator(".row[data-span-id]").evaluate_all("rows => rows.map(r => r.dataset.spanId)"),
                        page.locator(".row[data-span-id] .service").all_inner_texts(),
                        strict=True,
                    )
                )
                assert shown == {s.span_id: s.resource["service.name"] for s in spans}
                assert set(shown.values()) == set(SERVICES)
                heads = page.locator(".trace-head .facts").all_inner_texts()
                assert all(not re.search(r"(?<![\d,])1 spans", head) for head in heads)
                assert any(re.search(r"·\s+1 span(\s+·|$)", head) for head in heads)  # the close traces
                for legend in page.locator(".trace-head").all():  # each trace names its services
                    assert legend.locator(".services .service").count() >= 1
            page.screenshot(path=str(tmp_path / f"voice-{width}.png"), full_page=True)
    assert problems == []


def test_service_tags_drop_the_shared_prefix() -> None:
    """A service's tag is its name without the prefix every name shares up to a separator."""
    assert service_tags(["voice-device", "voice-server"]) == SERVICES
    assert service_tags(["shop.cart", "shop.checkout", "shop.cart"]) == {
        "shop.cart": "cart",
        "shop.checkout": "checkout",
    }
    assert service_tags(["chat"]) == {"chat": "chat"}
    for names in (["voice", "voice-server"], ["api", "apis"], ["a-1", "b-1"]):
        assert service_tags(names) == {name: name for name in names}


def test_services_are_coloured_and_tagged_alike_in_every_part(voice_file: Path) -> None:
    """In a terminal each service has a colour, on its tag and its bars; tags and colours stay the same
    when the output is printed in parts (as the demo does), given every service of the output."""
    traces = build_traces(read_spans(voice_file))
    out = io.StringIO()
    console = Console(file=out, width=200, force_terminal=True, color_system="standard")
    render_terminal(traces, console)
    lines = out.getvalue().splitlines()
    turn = next(line for line in lines if "voice turn" in line and "internal" in line)
    assert "\x1b[36mdevice" in turn and "\x1b[36m█" in turn  # cyan
    agent = next(line for line in lines if "invoke_agent" in line)
    assert "\x1b[35mserver" in agent and re.search("\x1b\\[35m *█", agent)  # magenta

    close = [t for t in traces if t.root_name == "close /voice"]  # one service alone
    assert "service" not in render(close, 200).splitlines()[2]  # no column for one service: the header names it
    assert "service voice-server" in render(close, 200)
    out = io.StringIO()
    console = Console(file=out, width=200, color_system=None)
    render_terminal(close, console, services=services_of(traces))
    header, row = out.getvalue().splitlines()[2:4]
    assert header.split()[:2] == ["span", "service"] and row.split()[:3] == ["close", "/voice", "server"]


def test_narrow_output_says_what_it_left_out(voice_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Columns left out to fit are named on the last line, with the width that shows them."""
    assert main(["view", str(voice_file), "--width", "80"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    found = re.fullmatch(r"kind and attributes not shown at 80 columns \(--width (\d+) shows them\)", last)
    assert found is not None, last
    assert main(["view", str(voice_file), "--width", found[1]]) == 0
    out = capsys.readouterr().out
    assert "not shown" not in out and "close_code=1006 error.type=close 1006 ERROR:" in out  # the attributes wrap
    assert max(len(line) for line in out.splitlines()) <= int(found[1])


@pytest.mark.parametrize(
    ("value", "name"),
    [
        (None, "empty"),
        (True, "bool"),  # not "int", though bool is one
        (3, "int"),
        (2.5, "double"),
        ("a", "string"),
        (b"\x00", "bytes"),
        ({"k": 1}, "map"),
        ([1, 2], "array"),
        (("a",), "array"),
    ],
)
def test_value_type_names_each_otlp_type(value: Any, name: str) -> None:
    assert value_type(value) == name
