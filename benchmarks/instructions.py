"""Instructions per unit, counted by valgrind: a measure the machine's noise leaves alone.

    python -m benchmarks.instructions [--only SUBSTRING] [--iterations 20000]
    python -m benchmarks.instructions --workloads stream-unpinned,push,uplink,echo64 [--only SUBSTRING] [--count 10000]
        [--stacks websockets,aiohttp,starlette,tornado]
    python -m benchmarks.instructions ... --compiled [DIR]   # on the compiled core (scripts/compile-core)

On a shared or throttled machine the timings of :mod:`benchmarks.micro` (wall clock or a thread's CPU time
alike) can move by 2x between hours, the same work running at half the pace. The number of instructions a case
executes does not: this runs each chosen case of :mod:`benchmarks.micro` under ``valgrind --tool=cachegrind
--cache-sim=no`` twice, after the same set-up and warm-up, with 0 and with ``--iterations`` units, and
reports the difference per unit. Instructions are not time (a lock or a cache miss costs more than its
count), but a change that removes work shows as fewer instructions whatever the machine is doing: use it to
compare two versions of the code, and the micro-benchmark for µs. Needs valgrind (``apt-get install valgrind``);
about 10 s per case.

With ``--workloads``, the same for the socket suite's round-based workloads and ``echo64``
(:mod:`benchmarks.run`): the instrumented process of each variant (the server; the client in ``uplink``) runs
under valgrind, its peer normally, once with 1 round of ``--count`` messages (round trips, for echo) and once
with 3, and the difference is divided by the messages between: instructions per message of the whole process
(library, event loop, instrumentation), bare included, and the ratio bare / variant, which is what the
throughput ratio would be if that process set the pace and an instruction cost the same everywhere. About 1
minute per variant.

With ``--compiled``, every measured process runs on the mypyc-compiled core that ``scripts/compile-core``
unpacked into ``build/compiled`` (or DIR), put first on PYTHONPATH; the bare variants are unchanged (they do not
import wstrace), so the ratios are compiled against bare (``docs/performance.md``, "Compiled core").
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from typing import Optional

from benchmarks.common import ROOT, ROUTE, add_compiled_argument, free_port, use_compiled
from benchmarks.micro import CASES
from benchmarks.run import Variant, client_args, variants


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
VALGRIND = ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null"]
ENV = {**os.environ, "PYTHONHASHSEED": "0"}  # the same dict layouts in both runs
ROUND_WORKLOADS = ("stream-unpinned", "push", "uplink", "echo64")


def _refs(stderr: str) -> int:
    found = REFS.search(stderr)
    if found is None:
        raise SystemExit(f"no instruction count from valgrind:\n{stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


def count(name: str, iterations: int) -> int:
    """Instructions of one child process running ``iterations`` units of case ``name``."""
    command = [*VALGRIND, sys.executable, "-c", CHILD, name, str(iterations)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=600, check=True)
    return _refs(done.stderr)


def count_socket(variant: Variant, rounds: int, messages: int) -> int:
    """Instructions of the instrumented process of ``variant`` (its server; the client in ``uplink``) over a run
    of ``rounds`` rounds of ``messages``, its peer running normally."""
    on_client = variant.workload == "uplink"
    port = free_port()
    server_cmd = [sys.executable, "-m", "benchmarks.server", "--stack", variant.stack, "--port", str(port)]
    server_cmd = [*([] if on_client else VALGRIND), *server_cmd, *variant.server]
    server = subprocess.Popen(
        server_cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=ENV
    )
    try:
        assert server.stdin is not None and server.stdout is not None
        if server.stdout.readline().strip() != "ready":
            raise SystemExit("the server did not start")
        counts = {"stream": messages, "push": messages, "uplink": messages, "rounds": rounds, "deadline": 900}
        counts["echo64"] = messages * rounds  # echo has no rounds: the same difference, as round trips
        client_cmd = [sys.executable, "-m", "benchmarks.client", f"ws://127.0.0.1:{port}{ROUTE}"]
        client_cmd = [*(VALGRIND if on_client else []), *client_cmd, *client_args(variant, counts)]
        client = subprocess.run(client_cmd, capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=1200, check=True)
        _, server_err = server.communicate("stop\n", timeout=300)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    return _refs(client.stderr if on_client else server_err)


def sockets(workloads: list[str], only: str, messages: int, stacks: list[str]) -> None:
    print("| workload | stack | variant | measured process | instructions per message | bare / variant |")
    print("|---|---|---|---|---:|---:|")
    bare: dict[tuple[str, str], float] = {}
    for variant in variants():
        if variant.workload not in workloads or variant.stack not in stacks:
            continue
        if not variant.bare and only not in variant.name:
            continue
        per_message = (count_socket(variant, 3, messages) - count_socket(variant, 1, messages)) / (2 * messages)
        if variant.bare:
            bare[variant.workload, variant.stack] = per_message
        base = bare.get((variant.workload, variant.stack))
        ratio = f"{base / per_message:.2f}" if base else ""
        side = "client" if variant.workload == "uplink" else "server"
        row = f"| {variant.workload} | {variant.stack} | {variant.name} | {side} | {per_message:,.0f} | {ratio} |"
        print(row, flush=True)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help="cases (variants) whose name contains this")
    parser.add_argument("--iterations", type=int, default=20_000)
    parser.add_argument("--workloads", default="", help=f"socket workloads instead, among {','.join(ROUND_WORKLOADS)}")
    parser.add_argument("--count", type=int, default=10_000, help="with --workloads: messages per round")
    parser.add_argument("--stacks", default="websockets", help="with --workloads: comma-separated server stacks")
    add_compiled_argument(parser)
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    if args.compiled is not None:
        ENV["PYTHONPATH"] = use_compiled(args.compiled)
        print(f"compiled core: {args.compiled}\n")
    if args.workloads:
        chosen = args.workloads.split(",")
        unknown = set(chosen) - set(ROUND_WORKLOADS)
        if unknown:
            parser.error(f"not a round-based workload: {', '.join(sorted(unknown))}")
        sockets(chosen, args.only, args.count, args.stacks.split(","))
        return 0
    args.only = args.only or "chunk"
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
