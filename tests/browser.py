"""Headless Chromium for the tests that drive a page (the HTML viewer, the JavaScript package): Debian's chromium,
driven by Playwright, with the flags this closed network needs."""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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


@contextmanager
def chromium_page(purpose: str, profile: Path, width: int, problems: list[str]) -> Iterator[Any]:
    """A page in a fresh headless Chromium profile, ``width`` px wide; console errors and page errors it logs are
    appended to ``problems`` (the test asserts there are none)."""
    executable = chromium(purpose)
    from playwright.sync_api import sync_playwright  # noqa: PLC0415 - optional: see chromium()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(profile),  # a fresh --user-data-dir
            executable_path=executable,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": width, "height": 900},
        )
        try:
            page = browser.new_page()
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
            yield page
        finally:
            browser.close()
