"""Instructions per unit of a micro-benchmark case, counted by valgrind: a measure the machine's noise leaves alone.

    python -m benchmarks.instructions [--only SUBSTRING] [--iterations 20000]

On a shared or throttled machine the wall clock (and a thread's CPU time, which a virtual machine's stolen
time inflates) of :mod:`benchmarks.micro` can move by 2x between rounds. The number of instructions a case
executes does not: this runs each chosen case of :mod:`benchmarks.micro` under ``valgrind --tool=cachegrind
--cache-sim=no`` twice, after the same set-up and warm-up, with 0 and with ``--iterations`` units, and
reports the difference per unit. Instructions are not time (a lock or a cache miss costs more than its
count), but a change that removes work shows as fewer instructions whatever the machine is doing: use it to
compare two versions of the code, and the micro-benchmark for µs. Needs valgrind (``apt-get install valgrind``);
about 10 s per case.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from typing import Optional

from benchmarks.common import ROOT
from benchmarks.micro import CASES


# Runs inside valgrind: set up one case as micro.run does (in a context of its own), warm it, then run it N times.
CHILD = """
import contextvars, sys
from benchmarks.micro import CASES
name, n = sys.argv[1], int(sys.argv[2])
context = contextvars.Context()
unit = context.run(CASES[name][0])
def loop(k):
    for _ in range(k):
        unit()
context.run(loop, 3000)
context.run(loop, n)
"""
REFS = re.compile(r"I\s+refs:\s+([\d,]+)")


def count(name: str, iterations: int) -> int:
    """Instructions of one child process running ``iterations`` units of case ``name``."""
    command = ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null"]
    command += [sys.executable, "-c", CHILD, name, str(iterations)]
    env = {**os.environ, "PYTHONHASHSEED": "0"}  # the same dict layouts in both runs
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600, check=True)
    found = REFS.search(done.stderr)
    if found is None:
        raise SystemExit(f"no instruction count from valgrind:\n{done.stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="chunk", help="cases whose name contains this (default: the chunk cases)")
    parser.add_argument("--iterations", type=int, default=20_000)
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    names = [name for name in CASES if args.only in name]
    print("| case | instructions per unit | minus its twin |")
    print("|---|---:|---:|")
    per_unit: dict[str, float] = {}
    for name in names:
        twin = CASES[name][1]
        for case in (twin, name):
            if case is not None and case not in per_unit:
                per_unit[case] = (count(case, args.iterations) - count(case, 0)) / args.iterations
        own = f"{per_unit[name] - per_unit[twin]:+,.0f}" if twin is not None else ""
        print(f"| {name} | {per_unit[name]:,.0f} | {own} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
