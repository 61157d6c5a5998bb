"""warn_once (wstrace._log): an internal failure is logged once per kind, never once per message."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import uuid

import pytest

from wstrace._log import warn_once


def _what(label: str) -> str:
    """A kind of failure no other test (or earlier run in this process) has logged."""
    return f"{label} {uuid.uuid4().hex}"


def _records(caplog: pytest.LogCaptureFixture, what: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if what in r.getMessage()]


def test_a_failure_is_logged_once_with_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    what = _what("encoding the envelope")
    caplog.set_level(logging.DEBUG, logger="wstrace")
    for n in range(5):
        try:
            raise ValueError(f"bad carrier {n}")
        except ValueError as exc:
            warn_once(what, exc)
    [record] = _records(caplog, what)
    assert record.name == "wstrace"
    assert record.levelno == logging.WARNING
    assert record.getMessage() == f"wstrace: {what} failed; tracing continues without it"
    assert record.exc_info is not None and isinstance(record.exc_info[1], ValueError)
    assert str(record.exc_info[1]) == "bad carrier 0"  # the first failure is the one shown


def test_a_notice_without_exception_is_logged_as_is(caplog: pytest.LogCaptureFixture) -> None:
    what = _what("ignoring WSTRACE_X")
    caplog.set_level(logging.DEBUG, logger="wstrace")
    warn_once(what)
    warn_once(what)
    [record] = _records(caplog, what)
    assert record.getMessage() == f"wstrace: {what}"
    assert record.levelno == logging.WARNING
    assert not record.exc_info


def test_kinds_are_independent(caplog: pytest.LogCaptureFixture) -> None:
    first, second = _what("the redact hook"), _what("the stream_end predicate")
    caplog.set_level(logging.DEBUG, logger="wstrace")
    warn_once(first, RuntimeError("a"))
    warn_once(second, RuntimeError("b"))
    warn_once(first, RuntimeError("c"))
    assert len(_records(caplog, first)) == 1
    assert len(_records(caplog, second)) == 1


def test_a_module_logger_can_be_given(caplog: pytest.LogCaptureFixture) -> None:
    what = _what("a bad variable")
    logger = logging.getLogger("wstrace.config")
    caplog.set_level(logging.DEBUG, logger="wstrace.config")
    warn_once(what, logger=logger)
    warn_once(what, logger=logger)
    [record] = _records(caplog, what)
    assert record.name == "wstrace.config"


def test_once_per_process_in_a_fresh_interpreter() -> None:
    """With no logging configured, the warning still reaches stderr, exactly once per kind."""
    script = textwrap.dedent(
        """
        from wstrace._log import warn_once

        for n in range(3):
            try:
                raise KeyError(n)
            except KeyError as exc:
                warn_once("tracing an inbound message", exc)
        warn_once("a notice")
        warn_once("a notice")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    lines = done.stderr.splitlines()
    assert lines.count("wstrace: tracing an inbound message failed; tracing continues without it") == 1
    assert lines.count("wstrace: a notice") == 1
    assert sum("KeyError" in line for line in lines) == 1  # one traceback
    assert done.stdout == ""
