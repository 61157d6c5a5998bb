"""``wstrace view FILE``: traces from an OTLP/JSON lines file, as span trees in the terminal or an HTML page."""

from __future__ import annotations

import argparse
import math
import re
import sys
import textwrap
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from rich.console import Console
from rich.table import Table
from rich.text import Text

from wstrace.cli.export import SpanRecord, TraceFile, read_trace_file
from wstrace.cli.fold import fold, service
from wstrace.cli.view_html import render_html


__all__ = [
    "Omitted",
    "Row",
    "Trace",
    "build_traces",
    "main",
    "render_terminal",
    "select_traces",
    "service_tags",
    "services_of",
    "waterfall",
]

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
#
# Each table is laid out for the console's width before rich sees it, so that rich never has to squeeze a
# column: a figure (a start, a duration, a stream's numbers) is never cut. What does not fit makes way in
# order of importance: the attributes and the kind are left out (the last line says so), the waterfall
# narrows, and long names wrap.

GAP = 2  # columns between two cells
NAME_MIN = 12
NAME_WANTED = 24  # names get this much before there is a waterfall
BAR_MIN, BAR_MAX = 10, 60
ATTRIBUTES_MIN = 20
SEPARATORS = "-._/: "
SERVICE_STYLES = ("cyan", "magenta", "green", "yellow", "blue", "bright_cyan", "bright_magenta", "bright_green")


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


def services_of(traces: Iterable[Trace]) -> tuple[str, ...]:
    """The ``service.name`` values of the traces' spans, in order of first appearance."""
    found = dict.fromkeys(service(span) for trace in traces for span in trace.every_span())
    return tuple(name for name in found if name)


def service_tags(services: Sequence[str]) -> dict[str, str]:
    """A short tag per service: its name without the prefix that all the names share up to a separator
    (``voice-device`` and ``voice-server`` are ``device`` and ``server``); the names themselves otherwise."""
    names = list(dict.fromkeys(services))
    if len(names) > 1:
        shared = names[0]
        for name in names[1:]:
            while not name.startswith(shared):
                shared = shared[:-1]
        cut = max(shared.rfind(separator) for separator in SEPARATORS) + 1
        if cut and all(len(name) > cut for name in names):
            return {name: name[cut:] for name in names}
    return {name: name for name in names}


COLUMN_ORDER = ("service", "waterfall", "kind", "attributes", "stalls", "mean ms", "p95 ms")
"""The columns a table may leave out, in the order a note names them."""


@dataclass(frozen=True)
class Omitted:
    """What :func:`render_terminal` left out to fit the console: the columns, and the width that shows them."""

    columns: tuple[str, ...] = ()
    width: int = 0
    """The narrowest console that shows every column of every table; 0 when nothing was left out."""

    def __or__(self, other: Omitted) -> Omitted:
        columns = set(self.columns + other.columns)
        return Omitted(tuple(c for c in COLUMN_ORDER if c in columns), max(self.width, other.width))

    def note(self, width: int) -> str:
        """``kind and attributes not shown at 80 columns``, or ``""`` when nothing was left out."""
        if not self.columns:
            return ""
        names = ", ".join(self.columns[:-1]) + " and " if len(self.columns) > 1 else ""
        return f"{names}{self.columns[-1]} not shown at {width} columns"


class _Services:
    """Each service's tag and colour; the column is shown when there are two services or more."""

    def __init__(self, services: Sequence[str]) -> None:
        self.tags = service_tags(services)
        self.styles = {name: SERVICE_STYLES[i % len(SERVICE_STYLES)] for i, name in enumerate(self.tags)}
        self.column = len(self.tags) > 1

    def tag(self, span: SpanRecord) -> Text:
        name = service(span)
        return Text(self.tags.get(name, name) or "-", style=self.styles.get(name, ""))

    def style(self, span: SpanRecord) -> str:
        return self.styles.get(service(span), "cyan")


class _Room:
    """Columns taken from a width, each but the first after a gap."""

    def __init__(self, width: int) -> None:
        self.width = width
        self.used = -GAP

    def take(self, size: int, force: bool = False) -> int:
        """``size`` if it fits (or ``force``), else 0 (the column is left out)."""
        if size <= 0 or not (force or self.used + GAP + size <= self.width):
            return 0
        self.used += GAP + size
        return size

    def grow(self, size: int, limit: int) -> int:
        """``size`` grown towards ``limit`` by what is left."""
        extra = max(0, min(limit - size, self.width - self.used))
        self.used += extra
        return size + extra


def _wrapped(first: str, rest: str, text: str, width: int) -> list[str]:
    """``text`` after ``first`` in lines of ``width``, continued after ``rest``; a number stays with the word
    after it (``(76 spans)``), and words longer than a line break."""
    if len(first) + len(text) <= width:
        return [first + text]
    bound = _NUMBER_AND_WORD.sub("\\1\x00", text.replace("\x00", " "))  # textwrap breaks at ASCII blanks only
    lines = textwrap.wrap(
        bound, width=max(width, len(rest) + 1), initial_indent=first, subsequent_indent=rest, break_on_hyphens=False
    )
    return [line.replace("\x00", " ") for line in lines] or [first]


_NUMBER_AND_WORD = re.compile(r"(\d) ")


def _name_cell(row: Row, width: int, error_line: bool) -> Text:
    """The span's name, indented by depth; a long name wraps under itself. With ``error_line`` (the attributes
    column left out), an error span's status follows on a line of its own."""
    span = row.span
    indent = "  " * row.depth
    mark = ORPHAN_MARK if row.orphan else ""
    lines = _wrapped(indent + mark, indent + "  ", span.name, width)
    error = span.status == "ERROR"
    text = Text("\n".join(lines), style="bold red" if error else "", no_wrap=False, overflow="fold")
    if mark:
        text.stylize("yellow", len(indent), len(indent) + len(mark))
    if error and error_line:
        status = "ERROR" + (f": {span.status_message}" if span.status_message else "")
        text.append("\n" + "\n".join(_wrapped(indent + "  ", indent + "  ", status, width)), style="red")
    return text


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


def _widest(header: str, cells: Iterable[str]) -> int:
    return max([len(header), *(len(cell) for cell in cells)])


def _table() -> Table:
    return Table(box=None, pad_edge=False, show_edge=False, padding=(0, GAP // 2), header_style="bold dim")


def _error(span: SpanRecord) -> bool:
    return span.status == "ERROR"


def _narrowest(width: int, shows_all: Callable[[int], bool]) -> int:
    """The narrowest console, from ``width`` up, where ``shows_all``; 0 when that is ``width`` itself."""
    if shows_all(width):
        return 0
    return next((wider for wider in range(width + 1, 4096) if shows_all(wider)), 4096)


def _span_widths(width: int, natural: dict[str, int]) -> dict[str, int]:
    """The span table's column widths for a console ``width`` columns wide, 0 for a column left out.

    Start and duration in full, always; then, as room allows: the service, names of up to ``NAME_WANTED``
    characters, a waterfall, the names in full (they wrap until then), the kind, a waterfall of a quarter of
    the width, and the attributes (they wrap); what is left goes to the waterfall when the attributes are left
    out.
    """
    room = _Room(width)
    widths = {"start": room.take(natural["start"], force=True), "duration": room.take(natural["duration"], force=True)}
    widths["name"] = room.take(min(natural["name"], NAME_MIN), force=True)
    widths["service"] = room.take(natural["service"])
    widths["name"] = room.grow(widths["name"], min(natural["name"], NAME_WANTED))
    widths["waterfall"] = room.take(BAR_MIN)
    widths["name"] = room.grow(widths["name"], min(natural["name"], max(NAME_MIN, width // 2)))
    widths["kind"] = room.take(natural["kind"])
    if widths["waterfall"]:
        widths["waterfall"] = room.grow(widths["waterfall"], max(BAR_MIN, min(BAR_MAX, width // 4)))
    widths["attributes"] = room.take(min(natural["attributes"], ATTRIBUTES_MIN))
    if widths["attributes"]:
        widths["attributes"] = room.grow(widths["attributes"], natural["attributes"])
    elif widths["waterfall"]:
        widths["waterfall"] = room.grow(widths["waterfall"], BAR_MAX)
    return widths


def _trace_table(trace: Trace, width: int, services: _Services) -> tuple[Table, Omitted]:
    rows = trace.rows
    starts = ["+" + _ms(row.span.start_ns - trace.start_ns) for row in rows]
    durations = [_ms(row.span.duration_ns) for row in rows]
    kinds = [row.span.kind.lower() for row in rows]
    attributes = [_key_attributes(row.span) for row in rows]
    names = [len("  " * row.depth + (ORPHAN_MARK if row.orphan else "") + row.span.name) for row in rows]
    tags = [services.tag(row.span) for row in rows]
    natural = {
        "name": max([len("span"), *names]),
        "service": _widest("service", (tag.plain for tag in tags)) if services.column else 0,
        "kind": _widest("kind", kinds),
        "start": _widest("start ms", starts),
        "duration": _widest("ms", durations),
        "attributes": _widest("attributes", (a.plain for a in attributes)) if any(a.plain for a in attributes) else 0,
    }

    # An error's status goes on a line of its own under the name when there is no attributes column.
    statuses = [len("  " * row.depth + "  ERROR: " + row.span.status_message) for row in rows if _error(row.span)]
    with_status = {**natural, "name": max([natural["name"], *statuses])}
    optional = [key for key in ("service", "waterfall", "kind", "attributes") if natural.get(key, 1)]

    def layout(width: int) -> dict[str, int]:
        widths = _span_widths(width, natural)
        return _span_widths(width, with_status) if statuses and not widths["attributes"] else widths

    widths = layout(width)
    left_out = tuple(key for key in optional if not widths[key])
    omitted = Omitted(left_out, _narrowest(width, lambda w: all(layout(w)[key] for key in optional)))
    name_w, service_w, kind_w, bar_w, attributes_w = (
        widths[key] for key in ("name", "service", "kind", "waterfall", "attributes")
    )

    table = _table()
    table.add_column("span", width=name_w, no_wrap=True, overflow="fold")
    if service_w:
        table.add_column("service", width=service_w, no_wrap=True, overflow="fold")
    if kind_w:
        table.add_column("kind", width=kind_w, no_wrap=True, overflow="fold")
    table.add_column("start ms", width=widths["start"], justify="right", no_wrap=True, overflow="fold")
    table.add_column("ms", width=widths["duration"], justify="right", no_wrap=True, overflow="fold")
    if bar_w:
        table.add_column("waterfall", width=bar_w, no_wrap=True, overflow="crop")
    if attributes_w:
        table.add_column("attributes", width=attributes_w, overflow="fold")
    for row, start, duration, kind, tag, attribute in zip(
        rows, starts, durations, kinds, tags, attributes, strict=True
    ):
        span = row.span
        cells: list[Any] = [_name_cell(row, name_w, error_line=not attributes_w)]
        if service_w:
            cells.append(tag)
        if kind_w:
            cells.append(kind)
        cells += [start, duration]
        if bar_w:
            bar = waterfall(span.start_ns, span.end_ns, trace.start_ns, trace.duration_ns, bar_w)
            cells.append(Text(bar, style="red" if span.status == "ERROR" else services.style(span)))
        if attributes_w:
            cells.append(attribute)
        table.add_row(*cells)
    return table, omitted


STREAM_COLUMNS = (
    ("chunks", STREAM_CHUNKS, _number, True),
    ("bytes", "wstrace.stream.size", _number, True),
    ("TTFC ms", "wstrace.stream.time_to_first_chunk", _seconds_ms, True),
    ("TTLC ms", "wstrace.stream.time_to_last_chunk", _seconds_ms, True),
    ("stalls", "wstrace.stream.stalls", _number, False),
    ("mean ms", "wstrace.stream.chunk_interval.mean", _seconds_ms, False),
    ("p95 ms", "wstrace.stream.chunk_interval.p95", _seconds_ms, False),
)
"""The streams table's figures: header, attribute, format, and whether it stays at any width (the others are
left out, last first, when the console is too narrow)."""
STREAM_ORDER = ("chunks", "bytes", "TTFC ms", "TTLC ms", "mean ms", "p95 ms", "stalls")


def _stream_table(trace: Trace, width: int, services: _Services) -> tuple[Optional[Table], Omitted]:
    streams = [row.span for row in trace.rows if STREAM_CHUNKS in row.span.attributes]
    if not streams:
        return None, Omitted()
    figures = {header: [show(span.attributes.get(key)) for span in streams] for header, key, show, _ in STREAM_COLUMNS}
    # A header may wrap at its space ("TTFC" over "ms"); a figure never does.
    least = {header: max(_widest("", cells), *map(len, header.split())) for header, cells in figures.items()}
    tags = [services.tag(span) for span in streams]
    name = max([len("span"), *(len(span.name) for span in streams)])
    service = _widest("service", (tag.plain for tag in tags)) if services.column else 0

    def layout(width: int) -> dict[str, int]:
        room = _Room(width)
        widths = {"span": room.take(min(name, NAME_MIN), force=True)}
        widths.update({header: room.take(least[header], force=True) for header, *_, kept in STREAM_COLUMNS if kept})
        widths["service"] = room.take(service)
        widths.update({header: room.take(least[header]) for header, *_, kept in STREAM_COLUMNS if not kept})
        widths["span"] = room.grow(widths["span"], min(name, max(NAME_MIN, width // 2)))
        for header in STREAM_ORDER:
            if widths[header]:
                widths[header] = room.grow(widths[header], len(header))
        return widths

    widths = layout(width)
    optional = ("service", *STREAM_ORDER) if service else STREAM_ORDER
    left_out = tuple(key for key in optional if not widths[key])
    omitted = Omitted(left_out, _narrowest(width, lambda w: all(layout(w)[key] for key in optional)))
    name_w, service_w = widths["span"], widths["service"]

    table = _table()
    table.title, table.title_justify = "streams", "left"
    table.add_column("span", width=name_w, no_wrap=True, overflow="fold")
    if service_w:
        table.add_column("service", width=service_w, no_wrap=True, overflow="fold")
    shown = [header for header in STREAM_ORDER if widths[header]]
    for header in shown:
        table.add_column(header, width=widths[header], justify="right", overflow="fold")
    for index, span in enumerate(streams):
        lines = _wrapped("", "  ", span.name, name_w)
        cells: list[Any] = [Text("\n".join(lines), style="red" if span.status == "ERROR" else "", no_wrap=False)]
        if service_w:
            cells.append(tags[index])
        table.add_row(*cells, *(figures[header][index] for header in shown))
    return table, omitted


def _facts(facts: Sequence[str], width: int) -> Text:
    """The facts joined by `` · ``, on as few lines as fit ``width``, never splitting one (unless it is
    longer than a line)."""
    lines: list[str] = []
    for fact in facts:
        if lines and len(joined := f"{lines[-1]}  ·  {fact}") <= width:
            lines[-1] = joined
        else:
            lines.append(fact)
    return Text("\n".join(lines), style="dim", overflow="fold")


def render_terminal(traces: Sequence[Trace], console: Console, *, services: Optional[Sequence[str]] = None) -> Omitted:
    """Print each trace: a header, the span tree with a waterfall, and its streams' figures.

    Each span's service (``service.name``) has a colour and, when the traces hold two services or more, a
    column of its own, tagged as :func:`service_tags` says for ``services`` (by default the traces' own;
    pass every service of the output when it is printed in parts, so the tags and colours stay the same).
    The tables fit the console's width; returns what they left out to fit.
    """
    known = _Services(services_of(traces) if services is None else services)
    omitted = Omitted()
    for number, trace in enumerate(traces):
        if number:
            console.print()
        console.print(
            Text.assemble(("trace ", "bold"), (trace.trace_id, "bold cyan"), "  ", (trace.root_name, "bold")),
            overflow="fold",
        )
        # Every span counts, also those a folded trace shows as one summary row.
        spans = _count(trace.spans, "span")
        shown = spans if len(trace.rows) == trace.spans else f"{_count(len(trace.rows), 'row')}, {spans}"
        facts = [_started(trace.start_ns), f"{_ms(trace.duration_ns)} ms", shown]
        facts.extend(f"session {session}" for session in trace.sessions)
        names = services_of([trace])
        if names:
            facts.append(f"service{'s' * (len(names) > 1)} {', '.join(names)}")
        console.print(_facts(facts, console.width))
        table, left_out = _trace_table(trace, console.width, known)
        console.print(table)
        if any(row.orphan for row in trace.rows):
            console.print(Text(f"{ORPHAN_MARK}parent span not in the file", style="dim yellow"))
        streams, streams_left_out = _stream_table(trace, console.width, known)
        if streams is not None:
            console.print(streams)
        omitted = omitted | left_out | streams_left_out
    return omitted


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
    omitted = render_terminal(selected, console)
    console.print(Text(f"\n{_count(spans, 'span')} in {_count(len(selected), 'trace')}{_summary(loaded)}", style="dim"))
    if omitted.columns:
        hint = f"{omitted.note(console.width)} (--width {omitted.width} shows them)"
        console.print(Text(hint, style="dim"), overflow="fold")
    return 0
