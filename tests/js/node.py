"""Node, npm and the JavaScript package's node_modules, for the tests that run them (tests/js/).

Missing node or npm skips those tests, saying what to install, or fails them when CI is set (``.ci/run`` installs
Debian's ``nodejs`` and ``npm``), as ``tests/redis_server.py`` does for redis-server.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

import pytest

from tests.missing import skip_or_fail


REPO = Path(__file__).resolve().parents[2]
JS = REPO / "js"


def in_ci(environ: Mapping[str, str]) -> bool:
    return environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_node(environ: Mapping[str, str] = os.environ) -> tuple[str, str]:
    """``(node, npm)``; missing, the test fails under CI and is skipped elsewhere."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node and npm:
        return node, npm
    missing = " and ".join(name for name, path in (("node", node), ("npm", npm)) if not path)
    message = f"{missing} not found: install Node.js 18 or later (apt-get install nodejs npm) for the JavaScript tests"
    if in_ci(environ):
        pytest.fail(f"{message}; CI is set, so this is an error, not a skip", pytrace=False)
    pytest.skip(message)


def node_modules(npm: str) -> Path:
    """``js/node_modules``, installed with ``npm ci`` (from ``js/package-lock.json``) when missing or older than the
    lock file."""
    installed = JS / "node_modules" / ".package-lock.json"
    lock = JS / "package-lock.json"
    if installed.is_file() and installed.stat().st_mtime >= lock.stat().st_mtime:
        return JS / "node_modules"
    result = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=JS,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if result.returncode != 0:
        output = f"{result.stdout}\n{result.stderr}"
        pytest.fail(f"npm ci failed in {JS} (exit {result.returncode}):\n{output}", pytrace=False)
    return JS / "node_modules"


def node_flags(node: str) -> list[str]:
    """Flags for node's test runner: Node 20 keeps its WHATWG WebSocket (the browser client's tests) behind one."""
    probe = subprocess.run(
        [node, "--experimental-websocket", "-e", "if (typeof WebSocket !== 'function') process.exit(1)"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    return ["--experimental-websocket"] if probe.returncode == 0 else []


def npm_install(npm: str, where: Path, spec: str) -> Path:
    """``where/node_modules`` with the npm package ``spec`` installed (from the registry, the first time); a failed
    install skips the test, or fails it under CI."""
    where.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--loglevel=error", "--no-save", spec],
        cwd=where,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if result.returncode != 0:
        skip_or_fail(f"npm install {spec} failed: {result.stdout}\n{result.stderr}")
    return where / "node_modules"
