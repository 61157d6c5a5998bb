"""What a test does when something it needs is not installed: skip here, fail under CI.

CI (``.ci/run``) installs every optional requirement of the suite, so there a missing one is a broken set-up,
not a reason to skip: the test fails and says what is missing. Elsewhere it skips with the same message.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import NoReturn, Optional

import pytest


def under_ci(environ: Optional[Mapping[str, str]] = None) -> bool:
    """``CI`` is set to something other than empty, ``0``, ``false`` or ``no`` (what CI services set)."""
    value = (os.environ if environ is None else environ).get("CI", "")
    return value.strip().lower() not in ("", "0", "false", "no")


def skip_or_fail(message: str, environ: Optional[Mapping[str, str]] = None) -> NoReturn:
    """Skip the test with ``message``; under CI, fail it instead."""
    if under_ci(environ):
        pytest.fail(f"{message}; CI is set, so this is an error, not a skip", pytrace=False)
    pytest.skip(message)
