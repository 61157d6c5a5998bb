"""The example apps, loaded from ``examples/``, and their traces as trees of (scope, kind, name, children)."""

from __future__ import annotations

import importlib.util
import sys
from collections import defaultdict
from pathlib import Path
from types import ModuleType
from typing import Any, Sequence

from opentelemetry.sdk.trace import ReadableSpan

from tests.instrumentation import contract


__all__ = ["Node", "count", "load_example", "traces", "tree"]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load_example(name: str) -> ModuleType:
    """``examples/<name>.py`` as a module (examples are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"{name}_example", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


Node = tuple[str, str, str, tuple[Any, ...]]


def traces(spans: Sequence[ReadableSpan], names: tuple[str, ...] = ()) -> list[list[ReadableSpan]]:
    """``spans`` (those whose name starts with one of ``names``, or all) by trace, the trace that started first
    first."""
    found: dict[int, list[ReadableSpan]] = defaultdict(list)
    for span in spans:
        if not names or span.name.startswith(names):
            found[contract.trace_id(span)].append(span)
    return sorted(found.values(), key=lambda group: min(s.start_time or 0 for s in group))


def tree(spans: list[ReadableSpan]) -> Node:
    """One trace as its root's (scope, kind, name, children), children in name order; every span is in it."""
    children: dict[int | None, list[ReadableSpan]] = defaultdict(list)
    for span in spans:
        children[contract.parent_id(span)].append(span)

    def node(span: ReadableSpan) -> Node:
        below = tuple(sorted((node(c) for c in children[contract.span_id(span)]), key=lambda n: n[2]))
        return (span.instrumentation_scope.name, span.kind.name, span.name, below)

    (root,) = children[None]
    assert sum(len(c) for c in children.values()) == len(spans)
    result = node(root)
    assert count(result) == len(spans), "every span hangs from the root"
    return result


def count(node: Node) -> int:
    return 1 + sum(count(c) for c in node[3])
