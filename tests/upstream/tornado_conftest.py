"""conftest.py for tornado's ``websocket_test.py``, copied next to it by the upstream-test harness.

``tornado.test.runtests`` (how tornado runs its own suite) fails the run if anything is logged at INFO or
above outside an ``ExpectLog`` (which filters the records it expects), with ``tornado.access`` silenced. This
applies the same rule per test, so that a stray log line is charged to the test that caused it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


logging.getLogger("tornado.access").setLevel(logging.CRITICAL)


class _Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(autouse=True)
def _no_unexpected_log_lines() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.INFO)  # tornado.testing.main's default (--logging=info)
    recorder = _Recorder()
    root.addHandler(recorder)
    try:
        yield
    finally:
        root.removeHandler(recorder)
        root.setLevel(level)
    if recorder.records:
        lines = []
        for record in recorder.records:
            text = f"{record.levelname}:{record.name}:{record.getMessage()}"
            if record.exc_info and record.exc_info[1] is not None:
                text += f" [{type(record.exc_info[1]).__name__}: {record.exc_info[1]}]"
            lines.append(text)
        pytest.fail("logged outside ExpectLog (tornado.test.runtests fails on this):\n" + "\n".join(lines))
