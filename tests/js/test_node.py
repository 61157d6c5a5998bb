"""The JavaScript package (js/): its node:test suite against real wstrace Python servers, its types, its metadata.

Needs node and npm (skipped without them, failed under CI); installs js/node_modules with ``npm ci`` when missing.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from tests.js.node import JS, REPO, node_flags, node_modules, require_node
from tests.js.vectors_fixture import FIXTURE, render


pytestmark = pytest.mark.timeout(900)


def _tail(text: str, lines: int = 120) -> str:
    return "\n".join(text.splitlines()[-lines:])


def test_the_js_package_tests_pass() -> None:
    """``node --test`` over js/test/*.test.js: the codec, the vectors, the ws client and the browser client, the
    clients against a real wstrace server (tests/peers/js_server.py) run with this Python."""
    node, npm = require_node()
    node_modules(npm)
    files = sorted(str(p.relative_to(JS)) for p in (JS / "test").glob("*.test.js"))
    assert files, "no JavaScript test files"
    env = {**os.environ, "WSTRACE_PYTHON": sys.executable, "NODE_OPTIONS": ""}
    result = subprocess.run(
        [node, *node_flags(node), "--test", *files],
        cwd=JS,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"node --test failed (exit {result.returncode}):\n{_tail(output)}"
    passed = re.search(r"^# pass (\d+)$", output, re.M)
    failed = re.search(r"^# fail (\d+)$", output, re.M)
    assert passed and failed, _tail(output)
    assert int(failed.group(1)) == 0 and int(passed.group(1)) >= 50, _tail(output)


def test_the_js_package_type_checks() -> None:
    """The JSDoc types hold: ``tsc --noEmit --allowJs --checkJs --strict`` (js/tsconfig.json)."""
    node, npm = require_node()
    node_modules(npm)
    result = subprocess.run(
        [node, str(JS / "node_modules" / "typescript" / "bin" / "tsc"), "-p", "tsconfig.json"],
        cwd=JS,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"tsc failed:\n{_tail(result.stdout + result.stderr)}"


def test_the_vectors_fixture_is_the_reference_codecs() -> None:
    """js/test/fixtures/vectors.json is what the reference codec makes now (``python -m tests.js.vectors_fixture``)."""
    assert FIXTURE.read_text(encoding="utf-8") == render(), "stale fixture: run python -m tests.js.vectors_fixture"


def test_package_metadata() -> None:
    """package.json is ready to publish: ESM, exports that exist, the repository's license, the API as a peer."""
    package = json.loads((JS / "package.json").read_text())
    pyproject = (REPO / "pyproject.toml").read_text()
    license_line = re.search(r'^license = "([^"]+)"$', pyproject, re.M)  # tomllib is Python 3.11+
    assert package["type"] == "module"
    assert license_line and package["license"] == license_line.group(1)
    assert package["version"] == "0.1.0"
    version = (JS / "src" / "version.js").read_text()
    assert f'VERSION = "{package["version"]}"' in version
    assert "@opentelemetry/api" in package["peerDependencies"]
    assert "@opentelemetry/api" not in package.get("dependencies", {}), "one API per process: a peer, never bundled"
    for entry, target in package["exports"].items():
        if isinstance(target, dict):
            assert (JS / target["default"]).is_file(), entry
            assert target["types"].startswith("./types/"), entry  # written by tsc at npm pack (prepack)
    assert {"src/", "types/"} <= set(package["files"])
    lock = json.loads((JS / "package-lock.json").read_text())
    assert lock["packages"][""]["devDependencies"] == package["devDependencies"], "package-lock.json is stale"
    ignored = (JS / ".gitignore").read_text().split()
    assert "node_modules/" in ignored and "types/" in ignored
    # The sdist's builder reads only the root .gitignore: without these, an sdist would carry node_modules.
    assert {"js/node_modules/", "js/types/"} <= set((REPO / ".gitignore").read_text().split())
