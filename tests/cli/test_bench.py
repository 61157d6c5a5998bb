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


def test_bench_timers_counts_the_entry_points_of_a_real_server() -> None:
    """The timers tool drives a real instrumented server and reports one receive and two span starts per round trip."""
    wstrace = Path(sys.executable).parent / "wstrace"
    result = subprocess.run(
        [str(wstrace), "bench", "--tool", "timers", "--", "--count", "300"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    rows = {
        cells[1]: cells[2:]
        for line in result.stdout.splitlines()
        if line.startswith("| ") and len(cells := [c.strip() for c in line.split("|")]) == 6
    }
    assert rows["ConnectionTracer.received"][0] == "1.00"  # calls per round trip
    assert rows["Tracer.start_span"][0] == "2.00"  # the receive span and the reply stream
    assert rows["_Histogram.record"][0] == "1.00"  # the reply's response time
    assert float(rows["ConnectionTracer.send_start"][1]) > 0
