"""Profile one benchmark server variant under load: where its CPU time goes, by layer.

    python -m benchmarks.profile [--workload echo64|echo16k|stream|stream-unpinned|push|uplink]
        [--stack websockets] [--variant "..."] [--seconds 8] [--rate 2000] [--raw OUT.raw]

Runs the server of a variant from :mod:`benchmarks.run` under py-spy (sampling, all running threads,
full file names), drives it with the measuring client for about ``--seconds``, and attributes every sample
(for ``uplink``, whose instrumented side is the client, the client runs under py-spy, against its server)
to a layer by the file of its innermost frame: wstrace, the OpenTelemetry SDK (spans, metrics), the
OpenTelemetry API and context, the WebSocket library, asyncio, the benchmark application, other. It then
lists the wstrace functions by inclusive time, and wstrace's hottest lines by self time. Times are per
unit (round trip or message), from the rate the client measured during the profile.

py-spy must be able to trace its child (it is, as root or with ptrace allowed); see ``make bench-deps``.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from benchmarks.common import ROOT, ROUTE, free_port
from benchmarks.run import PER_UNIT, Variant, client_args, pinned, variants


LAYERS = (
    ("wstrace", re.compile(r"/wstrace/")),
    ("OTel SDK: spans", re.compile(r"opentelemetry/(sdk/trace|attributes|sdk/util|sdk/resources)")),
    ("OTel SDK: metrics", re.compile(r"opentelemetry/sdk/metrics")),
    ("OTel API, context, propagators", re.compile(r"opentelemetry/")),
    ("wrapt", re.compile(r"/wrapt/")),
    ("ddtrace", re.compile(r"/ddtrace/")),
    ("WebSocket library and server", re.compile(r"/(websockets|aiohttp|starlette|uvicorn|tornado|h11|wsproto)/")),
    ("asyncio, selectors, sockets", re.compile(r"/(asyncio|selectors|socket|ssl)\.?")),
    ("benchmark application", re.compile(r"/benchmarks/")),
)
FRAME = re.compile(r"^(?P<function>.*) \((?P<file>.*):(?P<line>\d+)\)$")


OTHER = "other (interpreter, standard library)"


def layer_of(path: str) -> str:
    for name, pattern in LAYERS:
        if pattern.search(path):
            return name
    return OTHER


IDLE = {"select", "poll", "wait", "readline", "sleep", "control", "_wait_for_tstate_lock"}
"""Innermost functions (without their class) in which a thread waits rather than works."""


def analyse(raw: Path, per_unit_us: float) -> str:
    """Tables from py-spy's raw output (``--threads --idle``).

    Each sample of the main thread stands for an equal slice of the server's wall time, idle included;
    ``per_unit_us`` is that wall time divided by the units served, so shares become µs per unit.
    """
    main = 0
    layers: collections.Counter[str] = collections.Counter()
    background: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    lines: collections.Counter[str] = collections.Counter()
    for entry in raw.read_text().splitlines():
        stack, _, count = entry.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        thread, *rest = stack.split(";")
        parsed = [(m["function"], m["file"], m["line"]) for m in map(FRAME.match, rest) if m is not None]
        if any("importlib" in file for _, file, _ in parsed[:6]):
            continue  # start-up imports
        if not parsed:
            parsed = [("(no Python frame)", "", "0")]
        function, file, line = parsed[-1]
        idle = function.rpartition(".")[2] in IDLE
        name = thread.partition(": ")[2]
        if name and name != "MainThread":
            if not idle:
                background[name.rstrip("0123456789_-")] += n
            continue
        main += n
        if idle:
            layers["idle: waiting in the event loop"] += n
            continue
        # Standard-library helpers (threading, abc, contextlib…) count for the layer that called them.
        layer = OTHER
        for _, outer_file, _ in reversed(parsed):
            layer = layer_of(outer_file)
            if layer != OTHER:
                break
        layers[layer] += n
        if "/wstrace/" in file:
            lines[f"{file.split('/wstrace/')[-1]}:{line} {function}"] += n
        for where in {f"{f.split('/wstrace/')[-1]} {fn}" for fn, f, _ in parsed if "/wstrace/" in f}:
            inclusive[where] += n
    if not main:
        return "no samples"

    def row(label: str, n: int) -> str:
        return f"| {label} | {n / main:.1%} | {n / main * per_unit_us:.2f} |"

    out = [f"{main} samples of the main thread, idle included; {per_unit_us:.1f} µs of server wall time per unit", ""]
    out += ["| main thread: layer of the innermost frame | share | µs per unit |", "|---|---:|---:|"]
    out += [row(name, n) for name, n in layers.most_common()]
    out += [row(f"other thread, busy: {name}", n) for name, n in background.most_common()]
    out += ["", "| wstrace function (inclusive) | share | µs per unit |", "|---|---:|---:|"]
    out += [row(name, n) for name, n in inclusive.most_common(20)]
    out += ["", "| wstrace line (self) | share | µs per unit |", "|---|---:|---:|"]
    out += [row(name, n) for name, n in lines.most_common(15)]
    return "\n".join(out)


def profile(variant: Variant, seconds: float, rate: int, raw: Path) -> tuple[float, float, str]:
    """Run the variant once under py-spy; returns the client's rate, the profiled process's µs per unit, and
    the unit's name."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        raise SystemExit("py-spy is not installed: .venv/bin/pip install py-spy")
    spy_cmd = [spy, "record", "--nonblocking", "--full-filenames", "--threads", "--idle", "-r", str(rate)]
    spy_cmd += ["-f", "raw", "-o", str(raw), "--"]
    # Enough work for about --seconds at a typical instrumented rate.
    counts = {
        "echo64": int(4000 * seconds),
        "echo16k": int(3000 * seconds),
        "stream": int(30000 * seconds),
        "push": int(30000 * seconds),
        "uplink": int(30000 * seconds),
        "rounds": 1,
        "connections": 300,
        "concurrent": 5,
        "long": int(8000 * seconds),
        "deadline": int(seconds * 4 + 30),
    }
    if variant.workload == "uplink":
        return profile_client(variant, counts, spy_cmd)
    pin = variant.pinned
    port = free_port()
    server_cmd = [sys.executable, "-m", "benchmarks.server", "--stack", variant.stack, "--port", str(port)]
    server_cmd += [*variant.server]
    spy_cmd = pinned(1, [*spy_cmd, *pinned(0, server_cmd, pin)], pin)  # py-spy shares the client's CPU
    server = subprocess.Popen(
        spy_cmd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert server.stdin is not None and server.stdout is not None
        while True:
            line = server.stdout.readline()
            if not line:
                raise SystemExit("the server did not start under py-spy")
            if line.strip() == "ready":
                break
        started = time.monotonic()
        url = f"ws://127.0.0.1:{port}{ROUTE}"
        client_cmd = [sys.executable, "-m", "benchmarks.client", url, *client_args(variant, counts)]
        out = subprocess.run(
            pinned(1, client_cmd, pin), capture_output=True, text=True, cwd=ROOT, check=True, timeout=300
        )
        result = json.loads(out.stdout.strip().splitlines()[-1])
        server.stdin.write("stop\n")
        server.stdin.flush()
        wall = time.monotonic() - started
        server.communicate(timeout=120)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    units = result["done"] + result.get("warmup", 0)
    return float(result["rate"]), wall / units * 1e6, PER_UNIT[variant.workload]


def profile_client(variant: Variant, counts: dict[str, int], spy_cmd: list[str]) -> tuple[float, float, str]:
    """``uplink``: the instrumented side is the client; it runs under py-spy (on CPU 1, py-spy on CPU 0)."""
    port = free_port()
    server_cmd = [sys.executable, "-m", "benchmarks.server", "--stack", variant.stack, "--port", str(port)]
    server = subprocess.Popen(
        pinned(0, [*server_cmd, *variant.server]),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert server.stdin is not None and server.stdout is not None
        if server.stdout.readline().strip() != "ready":
            raise SystemExit("the server did not start")
        url = f"ws://127.0.0.1:{port}{ROUTE}"
        client_cmd = [sys.executable, "-m", "benchmarks.client", url, *client_args(variant, counts)]
        started = time.monotonic()
        out = subprocess.run(
            pinned(0, [*spy_cmd, *pinned(1, client_cmd)]),
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=True,
            timeout=300,
        )
        wall = time.monotonic() - started
        # py-spy writes lines of its own after the client's.
        result = json.loads(next(line for line in reversed(out.stdout.splitlines()) if line.startswith("{")))
        server.communicate("stop\n", timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    units = result["done"] + result.get("warmup", 0)
    return float(result["rate"]), wall / units * 1e6, PER_UNIT[variant.workload]


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    workloads = ("echo64", "echo16k", "stream", "stream-unpinned", "push", "uplink")
    parser.add_argument("--workload", default="echo64", choices=workloads)
    parser.add_argument("--stack", default="websockets")
    parser.add_argument("--variant", default="wstrace message, envelope off", help="a variant name from --list")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=1000, help="samples per second")
    parser.add_argument("--raw", type=Path, help="keep py-spy's raw output here")
    parser.add_argument("--list", action="store_true", help="list the variants of the workload and stack")
    args = parser.parse_args(argv)
    found = [v for v in variants() if v.workload == args.workload and v.stack == args.stack]
    if args.list:
        print("\n".join(v.name for v in found))
        return 0
    chosen = next((v for v in found if v.name == args.variant), None)
    if chosen is None:
        raise SystemExit(f"no variant {args.variant!r} for {args.workload} {args.stack}; see --list")
    with tempfile.TemporaryDirectory() as tmp:
        raw = args.raw or Path(tmp) / "profile.raw"
        rate, per_unit, unit = profile(chosen, args.seconds, args.rate, raw)
        print(f"{chosen.key}: {rate:,.0f} {unit}s/s during the profile (py-spy slows the client too)\n")
        print(analyse(raw, per_unit))
    return 0


if __name__ == "__main__":
    sys.exit(main())
