"""The metadata each adapter's ``package.py`` declares for OpenTelemetry tooling."""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

import pytest


ROOT = Path(__file__).resolve().parent.parent
# The [project.entry-points.opentelemetry_instrumentor] table (tomllib is Python 3.11+).
_TABLE = (ROOT / "pyproject.toml").read_text().split("[project.entry-points.opentelemetry_instrumentor]")[1]
ENTRY_POINTS: dict[str, str] = dict(re.findall(r'^([\w-]+) = "([\w.:]+)"$', _TABLE.split("\n[")[0], re.M))


def read_package(module: str) -> dict[str, Any]:
    """A package.py's globals, read as opentelemetry-python-contrib's tooling reads them
    (scripts/generate_instrumentation_readme.py executes the file and takes its globals)."""
    path = ROOT / "src" / Path(*module.split(".")) / "package.py"
    found: dict[str, Any] = {}
    exec(compile(path.read_text(), str(path), "exec"), found)
    return found


def test_every_adapter_has_an_entry_point() -> None:
    """The seven adapters, each an opentelemetry-instrument entry point with a package.py."""
    assert len(ENTRY_POINTS) == 7
    for target in ENTRY_POINTS.values():
        assert (ROOT / "src" / Path(*target.partition(":")[0].split(".")) / "package.py").is_file()


@pytest.mark.parametrize("entry_point", sorted(ENTRY_POINTS))
def test_package_declares_metrics_support(entry_point: str) -> None:
    """Every adapter records wstrace's connection, message and stream metrics (each client and
    server pair is checked by tests/instrumentation/test_interop.py), so each says so: the
    tooling reads a missing or false _supports_metrics as "no metrics"."""
    package = read_package(ENTRY_POINTS[entry_point].partition(":")[0])
    assert package.get("_supports_metrics", False) is True
    assert package["_instruments"], "the supported version range"


@pytest.mark.parametrize("entry_point", sorted(ENTRY_POINTS))
def test_instrumentor_reads_its_library_from_package(entry_point: str) -> None:
    """The instrumentor checks the versions its package.py declares, and imports the library it names
    (``_library``; the Socket.IO instrumentor still names its own)."""
    module, _, name = ENTRY_POINTS[entry_point].partition(":")
    package = read_package(module)
    instrumentor = getattr(importlib.import_module(module), name)
    assert tuple(instrumentor().instrumentation_dependencies()) == tuple(package["_instruments"])
    assert instrumentor._module == package.get("_library", instrumentor._module)
    assert instrumentor._module
