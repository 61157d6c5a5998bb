"""``benchmarks/large.py`` end to end, and the copy it measures: a large message is not copied behind its envelope."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
MiB = 1 << 20


def test_a_large_message_costs_the_sender_no_copy_of_its_payload(tmp_path: Path) -> None:
    """Peak traced memory while sending 2 MiB: with the envelope sent as a fragment of its own, as bare; with
    the prefix joined to the payload (the split turned off), one more copy of the payload."""
    out = tmp_path / "large.json"
    command = [sys.executable, "-m", "benchmarks.large", "--reps", "1", "--sizes", "2", "--count", "2"]
    command += ["--memory-count", "2", "--json", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {row["variant"]: row for row in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"bare", "wstrace", "wstrace-joined"}
    bare, split, joined = (rows[v]["sender_peak"] for v in ("bare", "wstrace", "wstrace-joined"))
    assert split < bare + 0.25 * MiB, "the split send copied the payload"
    assert joined > bare + 1.75 * MiB, "the joined send should copy the 2 MiB payload once"
    for row in rows.values():
        assert row["receiver_peak"] < 3 * 2 * MiB and row["ms"] > 0
    assert "| websockets | 2 MiB | wstrace |" in done.stdout
