"""Headless Chromium for the tests that drive a page (the HTML viewer, the JavaScript package): Debian's chromium,
driven by Playwright, with the flags this closed network needs."""

from __future__ import annotations

import importlib.util
import os
import shutil

from tests.missing import skip_or_fail


CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
"""Without the background-networking flags Chromium keeps dialling out, and every such connection is refused."""


def chromium(purpose: str) -> str:
    """The Chromium executable, or skip (fail under CI) saying what ``purpose`` is missing."""
    path = shutil.which("chromium") or "/usr/bin/chromium"
    missing = []
    if not os.access(path, os.X_OK):
        missing.append("Debian's chromium at /usr/bin/chromium (apt-get install chromium)")
    if importlib.util.find_spec("playwright") is None:
        missing.append("the playwright package (pip install playwright; it drives the system Chromium)")
    if missing:
        skip_or_fail(f"{purpose} needs " + " and ".join(missing))
    return path
