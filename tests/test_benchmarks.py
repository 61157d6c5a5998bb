"""The benchmark harness itself: its arithmetic, and one real interleaved run end to end."""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from benchmarks.run import Result, Variant, paired, summarise


ROOT = Path(__file__).resolve().parents[1]


def _result(variant: Variant, rates: dict[int, float]) -> Result:
    result = Result(variant)
    result.runs = [{"rep": rep, "rate": rate, "p50_us": 1e6 / rate} for rep, rate in rates.items()]
    return result


def test_ratios_are_paired_by_rep_and_medians_of_those() -> None:
    """Rep i of a variant is divided by rep i of its bare run; a rep missing on either side is left out."""
    bare = Variant("echo64", "websockets", "bare", ("--variant", "bare"))
    traced = Variant("echo64", "websockets", "traced", ("--variant", "wstrace"))
    results = {
        bare: _result(bare, {0: 1000.0, 1: 2000.0, 2: 1000.0, 3: 500.0}),
        traced: _result(traced, {0: 800.0, 1: 1000.0, 2: 700.0}),  # rep 3 failed
    }
    assert paired(results[traced], results[bare]) == [(800.0, 1000.0), (1000.0, 2000.0), (700.0, 1000.0)]
    row = next(r for r in summarise(results) if r["variant"] == "traced")
    assert row["ratio_median"] == pytest.approx(0.7)  # median of 0.8, 0.5, 0.7
    assert (row["ratio_min"], row["ratio_max"]) == pytest.approx((0.5, 0.8))
    assert row["extra_us"] == pytest.approx(1e6 / 700 - 1e6 / 1000)  # the median of 250, 500 and 428.6 µs
    assert row["rate_median"] == 800.0


def test_an_interleaved_run_end_to_end(tmp_path: Path) -> None:
    """Real servers and clients, reps alternating in order, and exactly two spans per round trip from wstrace."""
    out = tmp_path / "run.json"
    command = [sys.executable, "-m", "benchmarks.run", "--reps", "2", "--stacks", "websockets"]
    command += ["--workloads", "echo64", "--only", "wstrace message, envelope off", "--echo-count", "200"]
    command += ["--out", str(out), "--markdown", str(tmp_path / "run.md")]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    order = re.findall(r"rep (\d)/2 \[\d/\d\] echo64 websockets (.+?)\s{2,}", done.stderr)
    names = ["bare", "wstrace message, envelope off", "wstrace message, envelope off, metrics off"]
    assert order == [("1", n) for n in names] + [("2", n) for n in reversed(names)], "A B C, then C B A"
    report = json.loads(out.read_text())
    runs = {entry["variant"]: entry["runs"] for entry in report["runs"]}
    for name in names[1:]:
        assert len(runs[name]) == 2
        for run in runs[name]:
            # A receive span and a reply stream per round trip, warm-up included, plus handshake and close.
            assert run["spans"] == 2 * (run["done"] + run["warmup"]) + 2
    assert all(run.get("spans") is None for run in runs["bare"])
    row = next(r for r in report["rows"] if r["variant"] == names[1])
    # The ratio is paired by rep (rep i over bare's rep i), whatever the machine's pace: a wall-clock bound
    # here would be a timed test (a 200-round-trip run on a busy machine gave 2.18).
    bare = {run["rep"]: run["rate"] for run in runs["bare"]}
    paired = sorted(run["rate"] / bare[run["rep"]] for run in runs[names[1]])
    assert row["ratio_median"] == pytest.approx(statistics.median(paired))
    assert (row["ratio_min"], row["ratio_max"]) == pytest.approx((paired[0], paired[-1]))
    assert "| echo64 | websockets | bare |" in (tmp_path / "run.md").read_text()
