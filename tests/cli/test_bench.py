"""``wstrace bench`` reaches the benchmark suite of the checkout it runs from."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[2]


def test_bench_lists_the_suite() -> None:
    """The subcommand runs the suite's own runner, which lists every workload and variant."""
    wstrace = Path(sys.executable).parent / "wstrace"
    result = subprocess.run(
        [str(wstrace), "bench", "--", "--list"], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for expected in ("echo64 websockets bare", "stream websockets wstrace stream metrics, envelope off"):
        assert expected in lines
    assert any(line.startswith("echo64 starlette") and "otel-asgi" in line for line in lines)
