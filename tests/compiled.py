"""The compiled core (mypyc): which modules pyproject's ``mypyc`` build hook compiles, and whether this run has them.

``scripts/compile-core`` builds them; ``WSTRACE_COMPILED=1`` makes the suite refuse to start unless every one of
them is imported compiled (``conftest.py``), so a run meant for the compiled core cannot pass on the pure one.
"""

from __future__ import annotations

import importlib
import os
import re
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
# The hook's `include` list (tomllib is Python 3.11+): "src/wstrace/connection.py" -> "wstrace.connection".
_HOOK = (ROOT / "pyproject.toml").read_text().split("[tool.hatch.build.targets.wheel.hooks.mypyc]")[1].split("\n[")[0]
COMPILED_MODULES: tuple[str, ...] = tuple(
    path.removeprefix("src/").removesuffix(".py").replace("/", ".")
    for path in re.findall(r'"(src/[\w/]+\.py)"', _HOOK.split("include = [")[1].split("]")[0])
)


def expected() -> bool:
    """Whether this run must be on the compiled core (``WSTRACE_COMPILED=1``)."""
    return os.environ.get("WSTRACE_COMPILED") == "1"


def stray() -> list[str]:
    """Compiled modules left next to the sources (an in-place build: ``pip install .`` with the hook on), which
    would shadow the pure modules of ``src/`` in a run meant for them."""
    return sorted(p.name for p in (ROOT / "src").rglob("*") if p.suffix in (".so", ".pyd"))


def not_compiled() -> list[str]:
    """The modules of :data:`COMPILED_MODULES` imported as Python source, with where they came from."""
    found = []
    for name in COMPILED_MODULES:
        where = str(importlib.import_module(name).__file__)
        if not where.endswith((".so", ".pyd")):
            found.append(f"{name} ({where})")
    return found
