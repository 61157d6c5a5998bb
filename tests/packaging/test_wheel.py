"""The built wheel, installed with only the ``cli`` extra into a fresh venv (not editable), as a user gets it."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from collections.abc import Mapping
from pathlib import Path
from typing import Optional

import pytest


ROOT = Path(__file__).resolve().parents[2]
MAX_VENV_MB = 150


def _run(
    args: list[str], env: Optional[Mapping[str, str]] = None, **kwargs: object
) -> subprocess.CompletedProcess[str]:
    # Without the caller's PYTHONPATH, which may point at this checkout: the venv must run what it installed.
    clean = {k: v for k, v in (os.environ if env is None else env).items() if k != "PYTHONPATH"}
    return subprocess.run(args, capture_output=True, text=True, timeout=600, check=False, env=clean, **kwargs)  # type: ignore[call-overload]


def _size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink()) / 2**20


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding the wheel built from this checkout, with the ``cli`` extra."""
    work = tmp_path_factory.mktemp("wheel")
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(work), str(ROOT)])
    assert built.returncode == 0, built.stderr
    (wheel,) = work.glob("wstrace-*.whl")
    env_dir = work / "venv"
    venv.create(env_dir, with_pip=True)
    pip = _run([str(env_dir / "bin" / "python"), "-m", "pip", "install", "--quiet", f"{wheel}[cli]"])
    assert pip.returncode == 0, pip.stderr
    return env_dir


def test_the_wheel_installs_what_it_promises(installed: Path) -> None:
    python = str(installed / "bin" / "python")
    probe = (
        "import importlib.metadata as m, wstrace, wstrace.instrumentation.websockets; "
        "print(wstrace.__file__); "
        "ours = [e for e in m.entry_points(group='opentelemetry_instrumentor') if e.value.startswith('wstrace')]; "
        "print(sorted(e.name for e in ours)); "
        "print([e.value for e in m.entry_points(group='opentelemetry_traces_exporter', name='wstrace_file')])"
    )
    done = _run([python, "-c", probe], cwd=installed)
    assert done.returncode == 0, done.stderr
    where, instrumentors, exporter = done.stdout.splitlines()
    assert str(installed) in where  # the installed copy, not this checkout
    assert instrumentors == str(
        [
            "wstrace-aiohttp",
            "wstrace-channels",
            "wstrace-socketio",
            "wstrace-starlette",
            "wstrace-tornado",
            "wstrace-websocket-client",
            "wstrace-websockets",
        ]
    )
    assert exporter == "['wstrace.cli.export:OtlpJsonFileExporter']"
    helped = _run([str(installed / "bin" / "wstrace"), "--help"])
    assert helped.returncode == 0 and "demo" in helped.stdout and "view" in helped.stdout


def test_the_demo_runs_from_a_lean_venv_and_its_hint_works_when_pasted(installed: Path, tmp_path: Path) -> None:
    assert _size_mb(installed) <= MAX_VENV_MB
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "WSTRACE_")) and k != "PYTHONPATH"}
    env.update(PATH="/usr/bin:/bin", COLUMNS="200")  # the venv is not activated
    out = tmp_path / "t.jsonl"
    demo = _run(
        [str(installed / "bin" / "wstrace"), "demo", "--turns", "1", "--speed", "20", "--out", str(out)],
        cwd=tmp_path,
        env=env,
    )
    assert demo.returncode == 0, demo.stderr
    (hint,) = [line for line in demo.stdout.splitlines() if line.startswith("every span, unfolded: ")]
    command = hint.removeprefix("every span, unfolded: ").split("   (or:")[0]
    viewed = _run(["/bin/sh", "-c", command], cwd=tmp_path, env=env)  # pasted into a shell, as it is
    assert viewed.returncode == 0, (command, viewed.stderr)
    assert "voice turn" in viewed.stdout
