"""Run a scenario in a new interpreter, and get back what it returned and every record it logged.

wstrace logs each kind of internal failure once per process. A test that must see such a warning (or must see
none) cannot count on the process the suite runs in, where an earlier test may already have logged it, and
resetting the library's private "already warned" set would tie the test to an implementation detail. It runs
its scenario here instead: a module-level function, called in a process where nothing was logged yet.
"""

from __future__ import annotations

import base64
import logging
import os
import pickle
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import wstrace


ROOT = Path(__file__).resolve().parent.parent
MARK = "FRESH-RESULT "

# The child: capture every record at `level` and above, call the function, print the outcome pickled.
_CHILD = f"""
import base64, logging, pickle, sys
records = []

class Keep(logging.Handler):
    def emit(self, record):
        text = logging.Formatter("%(message)s").format(record)
        records.append(dict(logger=record.name, levelno=record.levelno, message=record.getMessage(), text=text))

fn, args, level = pickle.loads(base64.b64decode(sys.argv[1]))
root = logging.getLogger()
root.setLevel(level)
root.addHandler(Keep(level))
result = fn(*args)
sys.stdout.write({MARK!r} + base64.b64encode(pickle.dumps((result, records))).decode() + "\\n")
"""


@dataclass(frozen=True)
class Record:
    """One log record of the child: its logger, level, message, and message plus traceback (``text``)."""

    logger: str
    levelno: int
    message: str
    text: str


@dataclass(frozen=True)
class Fresh:
    """What the function returned, and every record logged while it ran."""

    result: Any
    records: list[Record]

    @property
    def wstrace(self) -> list[Record]:
        """The records of wstrace's own loggers."""
        return [r for r in self.records if r.logger == "wstrace" or r.logger.startswith("wstrace.")]


def call(fn: Callable[..., Any], *args: Any, level: int = logging.WARNING, timeout: float = 120) -> Fresh:
    """``fn(*args)`` in a new Python process (``fn`` must be importable by name; args and result picklable)."""
    package = str(Path(wstrace.__file__).resolve().parents[1])  # this tree's wstrace, not an installed one
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([package, str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    argument = base64.b64encode(pickle.dumps((fn, args, level))).decode()
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, argument],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=timeout,
        check=False,
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith(MARK)]
    assert out.returncode == 0 and lines, f"{fn.__qualname__}{args} failed in its process:\n{out.stdout}\n{out.stderr}"
    result, records = pickle.loads(base64.b64decode(lines[-1][len(MARK) :]))
    return Fresh(result, [Record(**r) for r in records])
