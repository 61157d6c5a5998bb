"""Where a round trip's time goes inside a real server: timers around wstrace's and the SDK's entry points.

    python -m benchmarks.timers [--workload echo64|echo16k|stream|stream-unpinned|push|uplink] [--stack websockets]
        [--variant "..."] [--count 5000]

Runs one server variant of :mod:`benchmarks.run` with a ``perf_counter_ns`` timer around each entry point an
adapter calls (``ConnectionTracer.received`` and friends), the reply stream's end and histogram record, the
SDK's span end, ``set_attributes`` and histogram record, and the minimal instrumentation's methods; drives it
with the measuring client; and prints µs per call and calls per unit. Unlike the in-process micro-benchmark,
the figures include what a busy server adds (cold caches, the event loop, the span processor's thread); unlike
py-spy, they are exact per call. The timers add about 0.2 µs to each call they wrap, and inclusive times
nest (``received`` includes the ``end_orphans`` it calls). For ``uplink`` the timed process is the client
(the instrumented side), against its bare server.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from typing import Optional

from benchmarks.common import ROOT, ROUTE, free_port
from benchmarks.run import PER_UNIT, client_args, pinned, variants


TIMED = {
    "wstrace.connection:ConnectionTracer": ("received", "send_start", "send_end", "receive_done"),
    "wstrace._replies:Replies": ("end_orphans", "reply_chunk", "outbound", "run_chunk"),
    "wstrace.streams:StreamRecorder": ("end", "_record"),
    "opentelemetry.sdk.trace:Tracer": ("start_span",),
    "opentelemetry.sdk.trace:_Span": ("end", "set_attributes"),
    "opentelemetry.sdk.metrics._internal.instrument:_Histogram": ("record",),
    "benchmarks.minimal:MinimalConnection": ("received", "send_start", "send_end", "receive_done"),
}
MARK = "timers "

# Runs in the timed process (benchmarks.server, or benchmarks.client for uplink) before its module: wraps each
# timed method, reports at exit.
BOOT = """
import atexit, importlib, json, runpy, sys, time
TIMED = json.loads(sys.argv.pop(1))
MODULE = sys.argv.pop(1)
spent = {}
def timed(cls, name):
    original = getattr(cls, name)
    key = f"{cls.__name__}.{name}"
    cell = spent.setdefault(key, [0, 0])
    def wrapper(*args, **kwargs):
        start = time.perf_counter_ns()
        try:
            return original(*args, **kwargs)
        finally:
            cell[0] += 1
            cell[1] += time.perf_counter_ns() - start
    setattr(cls, name, wrapper)
for where, names in TIMED.items():
    module, _, cls_name = where.partition(":")
    cls = getattr(importlib.import_module(module), cls_name)
    for name in names:
        timed(cls, name)
atexit.register(lambda: print("MARK" + json.dumps(spent), file=sys.stderr, flush=True))
sys.argv[0] = MODULE
runpy.run_module(MODULE, run_name="__main__")
""".replace("MARK", MARK)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    workloads = ("echo64", "echo16k", "stream", "stream-unpinned", "push", "uplink")
    parser.add_argument("--workload", default="echo64", choices=workloads)
    parser.add_argument("--stack", default="websockets")
    parser.add_argument("--variant", default="wstrace message, envelope off", help="a variant name (run's --list)")
    parser.add_argument("--count", type=int, default=5000, help="round trips (or messages) after the warm-up")
    args = parser.parse_args(argv)
    found = [v for v in variants() if v.workload == args.workload and v.stack == args.stack]
    chosen = next((v for v in found if v.name == args.variant), None)
    if chosen is None:
        names = ", ".join(v.name for v in found)
        raise SystemExit(f"no variant {args.variant!r} for {args.workload} {args.stack}; one of: {names}")
    port = free_port()
    client_timed = chosen.workload == "uplink"  # the instrumented side is the client
    pin = chosen.pinned
    python = [sys.executable, "-m", "benchmarks.server"]
    boot = [sys.executable, "-c", BOOT, json.dumps(TIMED)]
    server_cmd = [*(python if client_timed else [*boot, "benchmarks.server"]), "--stack", chosen.stack]
    server = subprocess.Popen(
        pinned(0, [*server_cmd, "--port", str(port), *chosen.server], pin),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert server.stdin is not None and server.stdout is not None
    try:
        if server.stdout.readline().strip() != "ready":
            raise SystemExit("the server did not start")
        counts = dict.fromkeys(("echo64", "echo16k", "stream", "push", "uplink"), args.count)
        counts |= {"deadline": 120, "rounds": 1}
        client = [*boot, "benchmarks.client"] if client_timed else [sys.executable, "-m", "benchmarks.client"]
        client_cmd = [*client, f"ws://127.0.0.1:{port}{ROUTE}", *client_args(chosen, counts)]
        out = subprocess.run(
            pinned(1, client_cmd, pin), capture_output=True, text=True, cwd=ROOT, check=True, timeout=300
        )
        result = json.loads(out.stdout.strip().splitlines()[-1])
        _, err = server.communicate("stop\n", timeout=120)
        if client_timed:
            err = out.stderr
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    spent = next((json.loads(line[len(MARK) :]) for line in err.splitlines() if line.startswith(MARK)), None)
    if spent is None:
        raise SystemExit(f"the timed process reported no timers:\n{err[-2000:]}")
    units = result["done"] + result.get("warmup", 0)
    unit = PER_UNIT[chosen.workload]
    print(f"{chosen.key}: {result['rate']:,.0f} {unit}s/s with the timers on\n")
    print(f"| entry point | calls per {unit} | µs per call | µs per {unit} |")
    print("|---|---:|---:|---:|")
    for key, (calls, ns) in sorted(spent.items(), key=lambda item: -item[1][1]):
        if calls:
            print(f"| {key} | {calls / units:.2f} | {ns / calls / 1000:.2f} | {ns / units / 1000:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
