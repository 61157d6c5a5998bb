"""``wstrace view FILE``: traces from an OTLP/JSON lines file, as span trees in the terminal or an HTML page."""

from __future__ import annotations

import argparse
import math
import sys
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from rich.console import Console
from rich.table import Table
from rich.text import Text

from wstrace.cli.export import SpanRecord, TraceFile, read_trace_file
from wstrace.cli.fold import fold
from wstrace.cli.view_html import render_html


__all__ = ["Row", "Trace", "build_traces", "main", "render_terminal", "select_traces", "waterfall"]

SESSION_ID = "websocket.session.id"
STREAM_CHUNKS = "wstrace.stream.chunk_count"
ORPHAN_MARK = "⋯ "

# The attributes worth a glance in the tree, with their short labels; the HTML page shows them all.
KEY_ATTRIBUTES = (
    ("websocket.message.ordinal", "ordinal"),
    ("messaging.message.body.size", "size"),
    ("websocket.envelope", "envelope"),
    ("websocket.close.code", "close_code"),
    ("http.response.status_code", "status_code"),
    ("gen_ai.operation.name", "gen_ai.operation"),
    ("error.type", "error.type"),
)


@dataclass(frozen=True)
class Row:
    """A span at its place in the tree: ``depth`` 0 is a root; ``orphan`` roots have a parent not in the file."""

    span: SpanRecord
    depth: int
    orphan: bool = False
    folded: tuple[Row, ...] = ()
    """On a summary row of a folded run (:func:`wstrace.cli.fold.fold`): the rows it stands for; else empty."""

    @property
    def hidden_spans(self) -> int:
        """How many spans a summary row stands for (nested summaries' included); 0 for a span's own row."""
        return sum(row.hidden_spans if row.folded else 1 for row in self.folded)


@dataclass(frozen=True)
class Trace:
    """One trace's spans in tree order (depth first, siblings by start time); in a folded trace
    (:func:`wstrace.cli.fold.fold`), a summary row stands for each long run's middle."""

    trace_id: str
    rows: tuple[Row, ...]
    start_ns: int
    end_ns: int
    span_count: Optional[int] = None
    """Spans in the trace, when ``rows`` do not show each one (a folded trace); else ``len(rows)``."""

    @property
    def spans(self) -> int:
        """How many spans the trace holds, shown or not."""
        return len(self.rows) if self.span_count is None else self.span_count

    @property
    def duration_ns(self) -> int:
        """From the first span's start to the last span's end."""
        return max(0, self.end_ns - self.start_ns)

    def every_span(self) -> Iterator[SpanRecord]:
        """Each span of the trace in tree order, those behind a summary row included (never the summary)."""
        stack = list(reversed(self.rows))
        while stack:
            row = stack.pop()
            if row.folded:
                stack.extend(reversed(row.folded))
            else:
                yield row.span

    @property
    def root_name(self) -> str:
        """The name of the first true root, else of the first orphan."""
        roots = [row for row in self.rows if row.depth == 0 and not row.folded]
        return next((row.span.name for row in roots if not row.orphan), roots[0].span.name if roots else "")

    @property
    def sessions(self) -> tuple[str, ...]:
        """The distinct ``websocket.session.id`` values on its spans."""
        found = (str(span.attributes[SESSION_ID]) for span in self.every_span() if SESSION_ID in span.attributes)
        return tuple(dict.fromkeys(found))


def build_traces(spans: Iterable[SpanRecord]) -> list[Trace]:
    """Group spans into traces, each a tree; traces sorted by start time. A span exported twice is shown once."""
    by_trace: dict[str, list[SpanRecord]] = defaultdict(list)
    seen: set[tuple[str, str, str, int, int]] = set()
    for span in spans:
        key = (span.trace_id, span.span_id, span.name, span.start_ns, span.end_ns)
        if key not in seen:
            seen.add(key)
            by_trace[span.trace_id].append(span)
    traces = [_tree(trace_id, members) for trace_id, members in by_trace.items()]
    return sorted(traces, key=lambda t: (t.start_ns, t.trace_id))


def _tree(trace_id: str, spans: list[SpanRecord]) -> Trace:
    spans = sorted(spans, key=lambda s: s.start_ns)  # stable: equal starts keep file order
    ids = {s.span_id for s in spans}
    children: dict[str, list[SpanRecord]] = defaultdict(list)
    roots: list[SpanRecord] = []
    for span in spans:
        parent = span.parent_span_id
        if parent is None or parent not in ids or parent == span.span_id:
            roots.append(span)
        else:
            children[parent].append(span)
    rows: list[Row] = []
    seen: set[int] = set()

    def walk(span: SpanRecord, depth: int, orphan: bool) -> None:
        # Iterative, and by object identity: a file can hold deep chains, duplicated ids or parent cycles.
        stack = [(span, depth, orphan)]
        while stack:
            current, level, is_orphan = stack.pop()
            if id(current) in seen:
                continue
            seen.add(id(current))
            rows.append(Row(current, level, is_orphan))
            stack.extend((child, level + 1, False) for child in reversed(children.get(current.span_id, ())))

    for root in roots:
        walk(root, 0, root.parent_span_id is not None)
    for span in spans:  # spans in a parent cycle are reachable from no root: show them as orphans
        if id(span) not in seen:
            walk(span, 0, True)
    return Trace(trace_id, tuple(rows), min(s.start_ns for s in spans), max(max(s.end_ns, s.start_ns) for s in spans))


def select_traces(
    traces: Sequence[Trace], *, trace: Optional[str] = None, session: Optional[str] = None
) -> list[Trace]:
    """Traces whose id starts with ``trace`` and that have a span whose session id starts with ``session``."""
    selected = list(traces)
    if trace:
        prefix = trace.strip().lower()
        selected = [t for t in selected if t.trace_id.startswith(prefix)]
    if session:
        wanted = session.strip().lower()
        selected = [t for t in selected if any(s.lower().startswith(wanted) for s in t.sessions)]
    return selected


# ---------------------------------------------------------------------------------------------------------
# Terminal


def waterfall(start_ns: int, end_ns: int, origin_ns: int, total_ns: int, width: int) -> str:
    """A bar of ``width`` cells: blanks up to the span's start, blocks up to its end, blanks after."""
    if width <= 0:
        return ""
    if total_ns <= 0:
        return "█" + " " * (width - 1)
    left = min(width - 1, max(0, int((start_ns - origin_ns) * width / total_ns)))
    if end_ns <= start_ns:
        return " " * left + "▏" + " " * (width - left - 1)
    right = min(width, max(left + 1, math.ceil((end_ns - origin_ns) * width / total_ns)))
    return " " * left + "█" * (right - left) + " " * (width - right)


def _ms(ns: float) -> str:
    return f"{ns / 1e6:,.2f}"


def _seconds_ms(value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return f"{value * 1000:,.2f}"
    return "-"


def _number(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return "-" if value is None else str(value)


def _key_attributes(span: SpanRecord) -> Text:
    shown = [f"{label}={span.attributes[key]}" for key, label in KEY_ATTRIBUTES if key in span.attributes]
    if span.links:
        shown.insert(0, f"links={len(span.links)}")
    text = Text(" ".join(shown))
    if span.status == "ERROR":
        message = f": {span.status_message}" if span.status_message else ""
        text.append(" " if shown else "")
        text.append("ERROR" + message, style="bold red")
    return text


def _started(ns: int) -> str:
    moment = datetime.fromtimestamp(ns / 1e9, tz=timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def _trace_table(trace: Trace, width: int) -> Table:
    bar_width = max(10, min(60, width // 4))
    table = Table(box=None, pad_edge=False, show_edge=False, padding=(0, 1), header_style="bold dim")
    table.add_column("span", no_wrap=True, overflow="ellipsis", max_width=max(16, width * 2 // 5))
    table.add_column("kind", no_wrap=True)
    table.add_column("start ms", justify="right", no_wrap=True)
    table.add_column("ms", justify="right", no_wrap=True)
    table.add_column("waterfall", width=bar_width, no_wrap=True)
    table.add_column("attributes", overflow="fold")
    for row in trace.rows:
        span = row.span
        error = span.status == "ERROR"
        name = Text("  " * row.depth)
        if row.orphan:
            name.append(ORPHAN_MARK, style="yellow")
        name.append(span.name, style="bold red" if error else "")
        table.add_row(
            name,
            span.kind.lower(),
            "+" + _ms(span.start_ns - trace.start_ns),
            _ms(span.duration_ns),
            Text(
                waterfall(span.start_ns, span.end_ns, trace.start_ns, trace.duration_ns, bar_width),
                style="red" if error else "cyan",
            ),
            _key_attributes(span),
        )
    return table


def _stream_table(trace: Trace) -> Optional[Table]:
    streams = [row.span for row in trace.rows if STREAM_CHUNKS in row.span.attributes]
    if not streams:
        return None
    table = Table(title="streams", title_justify="left", box=None, pad_edge=False, padding=(0, 1))
    table.header_style = "bold dim"
    table.add_column("span", no_wrap=True, overflow="ellipsis")
    for header in ("chunks", "bytes", "TTFC ms", "TTLC ms", "mean ms", "p95 ms", "stalls"):
        table.add_column(header, justify="right", no_wrap=True)
    for span in streams:
        a = span.attributes
        table.add_row(
            Text(span.name, style="red" if span.status == "ERROR" else ""),
            _number(a.get(STREAM_CHUNKS)),
            _number(a.get("wstrace.stream.size")),
            _seconds_ms(a.get("wstrace.stream.time_to_first_chunk")),
            _seconds_ms(a.get("wstrace.stream.time_to_last_chunk")),
            _seconds_ms(a.get("wstrace.stream.chunk_interval.mean")),
            _seconds_ms(a.get("wstrace.stream.chunk_interval.p95")),
            _number(a.get("wstrace.stream.stalls")),
        )
    return table


def render_terminal(traces: Sequence[Trace], console: Console) -> None:
    """Print each trace: a header, the span tree with a waterfall, and its streams' figures."""
    for number, trace in enumerate(traces):
        if number:
            console.print()
        console.print(
            Text.assemble(("trace ", "bold"), (trace.trace_id, "bold cyan"), "  ", (trace.root_name, "bold")),
            no_wrap=True,
            overflow="ellipsis",
        )
        # Every span counts, also those a folded trace shows as one summary row.
        spans = _count(trace.spans, "span")
        shown = spans if len(trace.rows) == trace.spans else f"{_count(len(trace.rows), 'row')}, {spans}"
        facts = [_started(trace.start_ns), f"{_ms(trace.duration_ns)} ms", shown]
        facts.extend(f"session {session}" for session in trace.sessions)
        console.print(Text("  ·  ".join(facts), style="dim"))
        console.print(_trace_table(trace, console.width))
        if any(row.orphan for row in trace.rows):
            console.print(Text(f"{ORPHAN_MARK}parent span not in the file", style="dim yellow"))
        streams = _stream_table(trace)
        if streams is not None:
            console.print(streams)


# ---------------------------------------------------------------------------------------------------------
# Command


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'s' * (n != 1)}"


def _summary(loaded: TraceFile) -> str:
    skipped = []
    if loaded.corrupt_lines:
        skipped.append(_count(loaded.corrupt_lines, "corrupt line"))
    if loaded.bad_spans:
        skipped.append(_count(loaded.bad_spans, "malformed span"))
    return f" (skipped {' and '.join(skipped)})" if skipped else ""


def main(args: argparse.Namespace) -> int:
    """Run ``wstrace view`` with parsed arguments; returns the exit status."""
    path = Path(args.file)
    try:
        loaded = read_trace_file(path)
    except FileNotFoundError:
        print(f"wstrace view: {path}: no such file", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"wstrace view: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    if not loaded.spans:
        print(f"wstrace view: {path} holds no spans{_summary(loaded)}", file=sys.stderr)
        return 1
    traces = build_traces(loaded.spans)
    selected = select_traces(traces, trace=args.trace, session=args.session)
    if not selected:
        wanted = " and ".join(
            f"{flag} {value}" for flag, value in (("--trace", args.trace), ("--session", args.session)) if value
        )
        print(f"wstrace view: no trace in {path} matches {wanted} ({_count(len(traces), 'trace')})", file=sys.stderr)
        return 1
    spans = sum(t.spans for t in selected)  # every span, folded or not
    if not args.no_fold:
        selected = [fold(t) for t in selected]
    if args.html:
        out = Path(args.html)
        try:
            out.write_text(render_html(selected, source=path.name), encoding="utf-8")
        except OSError as exc:
            print(f"wstrace view: cannot write {out}: {exc.strerror or exc}", file=sys.stderr)
            return 1
        print(f"wrote {out}: {_count(len(selected), 'trace')}, {_count(spans, 'span')}{_summary(loaded)}")
        return 0
    console = Console(width=args.width) if args.width else Console()
    render_terminal(selected, console)
    console.print(Text(f"\n{_count(spans, 'span')} in {_count(len(selected), 'trace')}{_summary(loaded)}", style="dim"))
    return 0
