"""Folding: a run of identical sibling subtrees shown as its first, one summary row, and its last.

A long stream with ``chunk_spans`` on, or many identical sends, makes hundreds of rows that say the same thing.
``fold`` keeps the first and the last subtree of each run of at least ``FOLD_MIN`` and puts one summary row
between them, which carries the rows it stands for (``Row.folded``): the HTML page expands it on click, the
terminal shows the summary only. The trace still counts every span (``Trace.spans``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from wstrace.cli.export import SpanRecord


if TYPE_CHECKING:
    from wstrace.cli.view import Row, Trace


__all__ = ["FOLD_MIN", "fold", "runs", "service"]

FOLD_MIN = 5
"""Runs of this many identical sibling subtrees (or traces) or more are folded."""

SIZE = "messaging.message.body.size"

Shape = tuple[tuple[int, str, str, str], ...]


def service(span: SpanRecord) -> str:
    """The ``service.name`` of the span's resource, or ``""``."""
    return str(span.resource.get("service.name", ""))


def fold(trace: Trace, minimum: int = FOLD_MIN) -> Trace:
    """``trace`` with each run of ``minimum`` or more identical sibling subtrees shown as first, summary, last.

    Identical: the same names, kinds and services at the same places. The summary row spans the hidden
    subtrees' time, sums their top spans' payload sizes, and holds their rows, folded the same way, in
    ``Row.folded``. Runs inside the first and last subtrees are folded too. ``span_count`` stays the number
    of spans in the trace.
    """
    rows = trace.rows
    children: dict[int, list[int]] = defaultdict(list)
    stack: list[int] = []
    for index, row in enumerate(rows):
        while stack and rows[stack[-1]].depth >= row.depth:
            stack.pop()
        children[stack[-1] if stack else -1].append(index)
        stack.append(index)

    def shape(index: int) -> Shape:
        base = rows[index].depth
        return tuple(
            (rows[i].depth - base, rows[i].span.name, rows[i].span.kind, service(rows[i].span))
            for i in _subtree(children, index)
        )

    def emit(siblings: list[int], out: list[Row]) -> None:
        for start, end in runs([shape(i) for i in siblings]):
            run = siblings[start:end]
            if len(run) >= minimum:
                emit_tree(run[0], out)
                hidden: list[Row] = []
                for index in run[1:-1]:
                    emit_tree(index, hidden)
                out.append(_summary(rows, children, run[1:-1], tuple(hidden)))
                emit_tree(run[-1], out)
            else:
                for index in run:
                    emit_tree(index, out)

    def emit_tree(index: int, out: list[Row]) -> None:
        out.append(rows[index])
        emit(children[index], out)

    shown: list[Row] = []
    emit(children[-1], shown)
    return replace(trace, rows=tuple(shown), span_count=trace.spans)


def runs(keys: Sequence[Hashable]) -> Iterator[tuple[int, int]]:
    """``(start, end)`` of each run of equal consecutive ``keys``, ``end`` exclusive."""
    start = 0
    for index in range(1, len(keys) + 1):
        if index == len(keys) or keys[index] != keys[start]:
            yield start, index
            start = index


def _subtree(children: dict[int, list[int]], index: int) -> list[int]:
    found, stack = [], [index]
    while stack:
        current = stack.pop()
        found.append(current)
        stack.extend(reversed(children[current]))
    return found


def _summary(rows: Sequence[Row], children: dict[int, list[int]], hidden: list[int], folded: tuple[Row, ...]) -> Row:
    first = rows[hidden[0]]
    spans = [rows[i].span for index in hidden for i in _subtree(children, index)]
    size = sum(int(rows[i].span.attributes.get(SIZE, 0) or 0) for i in hidden)
    more = f" ({len(spans)} spans)" if len(spans) > len(hidden) else ""
    record = SpanRecord(
        trace_id=first.span.trace_id,
        span_id="",
        parent_span_id=None,
        name=f"⋯ {len(hidden)} more {first.span.name}{more}",
        kind=first.span.kind,
        start_ns=min(s.start_ns for s in spans),
        end_ns=max(s.end_ns for s in spans),
        attributes={SIZE: size} if size else {},
        resource=first.span.resource,  # the run's spans are of one service (the same at the same places)
    )
    return replace(first, span=record, orphan=False, folded=folded)
