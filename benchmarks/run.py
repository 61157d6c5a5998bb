"""Run the benchmark suite: bare and instrumented variants interleaved, medians and paired ratios to bare.

    python -m benchmarks.run [--reps 3] [--quick] [--only SUBSTRING] [--stacks a,b] [--workloads a,b]
        [--out benchmarks/results/latest.json] [--markdown OUT] [--budget-minutes 10] [--unpinned] [--compiled [DIR]]

Every run starts a fresh server process (pinned to CPU 0 when taskset exists) and a fresh measuring client
(CPU 1), on 127.0.0.1 only, each bounded by a count, a deadline and a timeout; the variants of
``stream-unpinned`` (and every variant, with ``--unpinned``) run both processes unpinned, sharing the CPUs.
Each rep runs every chosen variant once, in declared order on even reps and reversed on odd ones
(A B C … C B A …), so that slow drift of the machine hits every variant alike. A variant's ratio is paired
by rep: rep i of the variant against rep i of its group's bare run (same workload and stack), then the
median is taken.

Workloads: ``echo64`` and ``echo16k`` (sequential round trips), ``stream`` (a reply stream of 10,000
messages, sent by the handler in the request's context), ``stream-unpinned`` (the same, unpinned, read by a
client that reads as fast as websockets allows), ``push`` (10,000 messages pushed by a task with no context
after the client's request), ``uplink`` (the *client* sends 10,000 messages under one application span;
the instrumented side is the client), ``concurrent`` (1,000 connections opening and exchanging messages at
once), ``idle`` (RSS that a second batch of 1,000 idle connections adds to the first) and ``long`` (memory
held per message on one connection carrying 100,000).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import IO, Any, Optional

from benchmarks.common import ROOT, ROUTE, add_compiled_argument, ddtrace_available, free_port, use_compiled


WORKLOADS = ("echo64", "echo16k", "stream", "stream-unpinned", "push", "uplink", "concurrent", "idle", "long")
STACKS = ("websockets", "aiohttp", "starlette", "tornado")
MEMORY_WORKLOADS = ("idle", "long")
PER_UNIT = {
    "echo64": "round trip",
    "echo16k": "round trip",
    "stream": "message",
    "stream-unpinned": "message",
    "push": "message",
    "uplink": "message",
    "concurrent": "round trip",
    "idle": "connection",
    "long": "message",
}


@dataclass(frozen=True)
class Variant:
    workload: str
    stack: str
    name: str
    server: tuple[str, ...] = ()
    traced_peer: bool = False
    needs: str = ""
    """An optional package the variant needs (``ddtrace``); without it the variant is skipped."""
    client: tuple[str, ...] = ()
    """More arguments for the client (``uplink``: its own instrumentation; ``--fast-read``)."""
    pinned: bool = True
    """Server on CPU 0, client on CPU 1; otherwise both run where the scheduler puts them."""

    @property
    def bare(self) -> bool:
        return self.name == "bare"

    @property
    def key(self) -> str:
        return f"{self.workload} {self.stack} {self.name}"


BARE = ("--variant", "bare")
MSG_OFF = ("--variant", "wstrace", "--envelope", "off")
MSG_ON = ("--variant", "wstrace", "--envelope", "negotiate")
CONN_OFF = ("--variant", "wstrace", "--model", "connection", "--envelope", "off")
SAMPLED_OUT = ("--variant", "wstrace", "--sampled-out")
MINIMAL_OFF = ("--variant", "minimal", "--envelope", "off")
MINIMAL_ON = ("--variant", "minimal", "--envelope", "on")
FAST_READ = ("--fast-read",)
CLIENT_BARE = ("--instrument", "off")
CLIENT_SDK = ("--instrument", "sdk")
CLIENT_OFF = ("--instrument", "wstrace", "--envelope", "off")
CLIENT_ON = ("--instrument", "wstrace", "--envelope", "negotiate")


def variants() -> list[Variant]:
    """The full matrix, in run order (bare first in each group)."""
    found: list[Variant] = []

    def add(workload: str, stack: str, name: str, server: tuple[str, ...], **kw: Any) -> None:
        found.append(Variant(workload, stack, name, server, **kw))

    for stack in ("websockets", "aiohttp", "starlette", "tornado"):
        add("echo64", stack, "bare", BARE)
        add("echo64", stack, "minimal (raw API), envelope off", MINIMAL_OFF)
        if stack == "websockets":
            add("echo64", stack, "minimal (raw API), envelope on", MINIMAL_ON, traced_peer=True)
        add("echo64", stack, "wstrace message, envelope off", MSG_OFF)
        if stack == "websockets":
            add("echo64", stack, "wstrace message, envelope off, metrics off", (*MSG_OFF, "--metrics", "off"))
        add("echo64", stack, "wstrace message, envelope on", MSG_ON, traced_peer=True)
        if stack != "tornado":
            add("echo64", stack, "wstrace connection, envelope off", CONN_OFF)
        add("echo64", stack, "wstrace sampled out", SAMPLED_OUT)
        if stack == "websockets":
            add("echo64", stack, "wstrace sampled out, envelope on", SAMPLED_OUT, traced_peer=True)
        if stack == "starlette":
            add("echo64", stack, "otel-asgi", ("--variant", "otel-asgi"))
            add("echo64", stack, "ddtrace", ("--variant", "ddtrace"), needs="ddtrace")
    for stack in ("websockets", "aiohttp", "starlette"):
        add("echo16k", stack, "bare", BARE)
        if stack == "websockets":
            add("echo16k", stack, "minimal (raw API), envelope off", MINIMAL_OFF)
        add("echo16k", stack, "wstrace message, envelope off", MSG_OFF)
        add("echo16k", stack, "wstrace message, envelope on", MSG_ON, traced_peer=True)
        if stack == "starlette":
            add("echo16k", stack, "otel-asgi", ("--variant", "otel-asgi"))
            add("echo16k", stack, "ddtrace", ("--variant", "ddtrace"), needs="ddtrace")
    for stack in ("websockets", "aiohttp", "starlette", "tornado"):
        add("stream", stack, "bare", BARE)
        add("stream", stack, "wstrace stream metrics, envelope off", MSG_OFF)
        if stack in ("websockets", "starlette"):
            add("stream", stack, "wstrace stream metrics, envelope on", MSG_ON, traced_peer=True)
        if stack == "websockets":
            add("stream", stack, "wstrace span per message (streams off)", (*MSG_OFF, "--streams", "off"))
            add("stream", stack, "minimal (raw API), span per message", MINIMAL_OFF)
            add("stream", stack, "wstrace sampled out", SAMPLED_OUT)
        if stack == "starlette":
            add("stream", stack, "otel-asgi", ("--variant", "otel-asgi"))
            add("stream", stack, "ddtrace", ("--variant", "ddtrace"), needs="ddtrace")
    # The shapes of docs/streams.md beyond the reply stream (websockets): a reply stream with both processes
    # unpinned and a client that reads as fast as it can; a worker's pushes (a run with no context); and a
    # client's uplink under an application span, where the client is the instrumented side.
    unpinned = {"client": FAST_READ, "pinned": False}
    add("stream-unpinned", "websockets", "bare", BARE, **unpinned)
    add("stream-unpinned", "websockets", "wstrace stream metrics, envelope off", MSG_OFF, **unpinned)
    add("stream-unpinned", "websockets", "wstrace stream metrics, envelope on", MSG_ON, traced_peer=True, **unpinned)
    add("push", "websockets", "bare", BARE)
    add("push", "websockets", "wstrace push run, envelope off", MSG_OFF)
    add("push", "websockets", "wstrace push run, envelope on", MSG_ON, traced_peer=True)
    add("uplink", "websockets", "bare", BARE, client=CLIENT_BARE)
    add("uplink", "websockets", "SDK only (the application's span), no wstrace", BARE, client=CLIENT_SDK)
    add("uplink", "websockets", "wstrace client, envelope off", BARE, client=CLIENT_OFF)
    add("uplink", "websockets", "wstrace client, envelope on", (*BARE, "--traced-peer"), client=CLIENT_ON)
    for stack in ("websockets", "aiohttp", "starlette"):
        add("concurrent", stack, "bare", BARE)
        add("concurrent", stack, "wstrace message, envelope off", MSG_OFF)
        if stack == "starlette":
            add("concurrent", stack, "otel-asgi", ("--variant", "otel-asgi"))
            add("concurrent", stack, "ddtrace", ("--variant", "ddtrace"), needs="ddtrace")
    for stack in ("websockets", "aiohttp", "starlette"):
        add("idle", stack, "bare", BARE)
        add("idle", stack, "wstrace message", MSG_OFF)
        if stack == "websockets":
            add("idle", stack, "wstrace message, envelope on", MSG_ON, traced_peer=True)
            add("idle", stack, "wstrace sampled out, envelope on", SAMPLED_OUT, traced_peer=True)
        if stack == "websockets":
            add("idle", stack, "wstrace connection", CONN_OFF)
    add("long", "websockets", "bare", BARE)
    add("long", "websockets", "wstrace connection", CONN_OFF)
    add("long", "websockets", "wstrace message", MSG_OFF)
    return found


@dataclass
class Result:
    variant: Variant
    runs: list[dict[str, Any]] = field(default_factory=list)
    """One entry per rep: the client's JSON, ``spans``, and ``probes`` (label -> server memory probe)."""
    failures: list[str] = field(default_factory=list)


def pinned(cpu: int, argv: list[str], pin: bool = True) -> list[str]:
    if pin and shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
        return ["taskset", "-c", str(cpu), *argv]
    return argv


def client_args(variant: Variant, counts: dict[str, int]) -> list[str]:
    workload = variant.workload
    args = ["--deadline", str(counts["deadline"])]
    if workload in ("echo64", "echo16k"):
        size = 16384 if workload == "echo16k" else 64
        args += ["--workload", "echo", "--count", str(counts[workload]), "--size", str(size)]
        if counts.get("server_cpu"):
            args.append("--server-cpu")  # the server's CPU per round trip: the machine's noise mostly left out
    elif workload == "stream":
        args += ["--workload", "stream", "--count", str(counts["stream"])]
    elif workload in ("stream-unpinned", "push", "uplink"):
        # One connection, several rounds of one stream (push run, upload) each; the median round counts.
        count = counts["stream" if workload == "stream-unpinned" else workload]
        if workload != "uplink" and counts.get("server_cpu"):
            args.append("--server-cpu")  # the instrumented side is the server: the runner asks it its CPU time
        args += [
            "--workload",
            workload.partition("-")[0],
            "--count",
            str(count),
            "--rounds",
            str(counts.get("rounds", 1)),
        ]
    elif workload == "concurrent":
        args += ["--workload", "concurrent", "--connections", str(counts["connections"])]
        args += ["--count", str(counts["concurrent"])]
    elif workload == "idle":
        args += ["--workload", "idle", "--connections", str(counts["connections"])]
    else:
        args += ["--workload", "long", "--count", str(counts["long"])]
    if variant.traced_peer:
        args.append("--traced-peer")
    if counts.get("fast_read") and workload in ("stream", "push") and "--fast-read" not in variant.client:
        args.append("--fast-read")
    return [*args, *variant.client]


def _line(stream: IO[str]) -> str:
    line = stream.readline()
    if not line:
        raise RuntimeError("process ended early")
    return line.strip()


def run_once(variant: Variant, counts: dict[str, int], log: IO[str], pin: bool = True) -> dict[str, Any]:
    """One server and one client, fresh; returns the client's result with ``spans`` and ``probes``.

    ``spans`` are the server's, or the client's where the client is the instrumented side (``uplink``).
    """
    pin = pin and variant.pinned
    port = free_port()
    python = sys.executable
    server_cmd = [python, "-m", "benchmarks.server", "--stack", variant.stack, "--port", str(port), *variant.server]
    url = f"ws://127.0.0.1:{port}{ROUTE}"
    client_cmd = [python, "-m", "benchmarks.client", url, *client_args(variant, counts)]
    log.write(f"\n$ {shlex.join(server_cmd)}\n$ {shlex.join(client_cmd)}\n")
    log.flush()
    server = subprocess.Popen(
        pinned(0, server_cmd, pin), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT
    )
    client: Optional[subprocess.Popen[str]] = None

    # A watchdog: nothing may hang the suite. The timeout is the client's deadline plus start-up slack.
    def kill() -> None:
        for proc in (server, client):
            if proc is not None:
                proc.kill()

    timer = threading.Timer(counts["deadline"] + 60, kill)
    timer.start()
    try:
        assert server.stdin is not None and server.stdout is not None
        if _line(server.stdout) != "ready":
            raise RuntimeError("the server did not start")
        client = subprocess.Popen(
            pinned(1, client_cmd, pin), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT
        )
        assert client.stdin is not None and client.stdout is not None
        probes: dict[str, Any] = {}
        cpu: dict[str, float] = {}
        while True:
            line = _line(client.stdout)
            what, _, label = line.partition(" ")
            if what not in ("probe", "cpu"):
                break
            server.stdin.write(f"{what}\n")  # a memory probe, or the server's CPU time
            server.stdin.flush()
            answer = json.loads(_line(server.stdout).split(" ", 1)[1])
            if what == "cpu":
                cpu[label] = answer["cpu"]
            else:
                probes[label] = answer
            client.stdin.write("go\n")
            client.stdin.flush()
        result: dict[str, Any] = json.loads(line)
        if client.wait(30) != 0:
            raise RuntimeError(f"the client failed with status {client.returncode}")
        result["probes"] = probes
        if "start" in cpu and "end" in cpu and result.get("done"):
            result["cpu_us"] = (cpu["end"] - cpu["start"]) / result["done"] * 1e6  # the server's, per message
        server.stdin.write("stop\n")
        server.stdin.flush()
        rest, _ = server.communicate(timeout=60)
        spans = [int(word.split()[1]) for word in rest.splitlines() if word.startswith("spans ")]
        result["spans"] = spans[0] if spans else result.get("spans")
        return result
    finally:
        timer.cancel()
        for proc in (client, server):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


def summarise(results: dict[Variant, Result]) -> list[dict[str, Any]]:
    """Throughput rows: medians, and ratios to the group's bare run paired by rep."""
    rows = []
    bare = {(v.workload, v.stack): r for v, r in results.items() if v.bare}
    for variant, result in results.items():
        if variant.workload in MEMORY_WORKLOADS:
            continue
        row: dict[str, Any] = {
            "workload": variant.workload,
            "stack": variant.stack,
            "variant": variant.name,
            "per": PER_UNIT[variant.workload],
            "reps": len(result.runs),
            "failures": result.failures,
        }
        rows.append(row)
        base = bare.get((variant.workload, variant.stack))
        rates = [run["rate"] for run in result.runs]
        if not rates:
            continue
        row.update(rate_median=statistics.median(rates), rate_min=min(rates), rate_max=max(rates))
        p50 = [run["p50_us"] for run in result.runs if "p50_us" in run]
        row["p50_us_median"] = statistics.median(p50) if p50 else None
        spans = [run["spans"] for run in result.runs if run.get("spans") is not None]
        row["spans_per_run"] = statistics.median(spans) if spans else None
        if base is not None:
            pairs = paired(result, base)
            if pairs:
                ratios = [a / b for a, b in pairs]
                row.update(ratio_median=statistics.median(ratios), ratio_min=min(ratios), ratio_max=max(ratios))
                row["extra_us"] = statistics.median(1e6 / a - 1e6 / b for a, b in pairs)
            latency = paired(result, base, "p50_us")
            if latency:
                # Robust to the scheduler stalls a shared machine adds to the mean: bare p50 / variant p50.
                row["p50_ratio_median"] = statistics.median(b / a for a, b in latency)
        cpu = [run["cpu_us"] for run in result.runs if "cpu_us" in run]
        if cpu:
            # The instrumented side's CPU per message (rounds workloads): whichever side is the bottleneck.
            row.update(cpu_us_median=statistics.median(cpu), cpu_us_min=min(cpu), cpu_us_max=max(cpu))
            cpu_pairs = paired(result, base, "cpu_us") if base is not None else []
            if cpu_pairs:
                cpu_ratios = [b / a for a, b in cpu_pairs]
                row.update(
                    cpu_ratio_median=statistics.median(cpu_ratios),
                    cpu_ratio_min=min(cpu_ratios),
                    cpu_ratio_max=max(cpu_ratios),
                    cpu_extra_us=statistics.median(a - b for a, b in cpu_pairs),
                )
    return rows


def paired(result: Result, base: Result, key: str = "rate") -> list[tuple[float, float]]:
    """(variant value, bare value) for each rep where both ran."""
    mine = {run["rep"]: run[key] for run in result.runs if key in run}
    theirs = {run["rep"]: run[key] for run in base.runs if key in run}
    return [(mine[rep], theirs[rep]) for rep in sorted(mine) if rep in theirs]


def _added(run: dict[str, Any], what: str) -> float:
    """What the second batch of idle connections added: the cost of one more connection, without the first
    batch's one-off costs (first use of code paths, the span batch in flight when the probe flushes)."""
    return float(run["probes"]["more"][what] - run["probes"]["open"][what])


def memory_rows(results: dict[Variant, Result], counts: dict[str, int]) -> list[dict[str, Any]]:
    rows = []
    bare_idle = {v.stack: r for v, r in results.items() if v.bare and v.workload == "idle"}
    for variant, result in results.items():
        if variant.workload not in MEMORY_WORKLOADS:
            continue
        row: dict[str, Any] = {"workload": variant.workload, "stack": variant.stack, "variant": variant.name}
        row["reps"] = len(result.runs)
        row["failures"] = result.failures
        rows.append(row)
        if not result.runs:
            continue
        if variant.workload == "idle":
            n = counts["connections"]
            row["connections"] = n
            for what in ("rss", "blocks", "objects"):
                row[f"{what}_per_connection"] = statistics.median(_added(run, what) / n for run in result.runs)
            row["rss_first_per_connection"] = statistics.median(
                (run["probes"]["open"]["rss"] - run["probes"]["before"]["rss"]) / n for run in result.runs
            )
            row["rss_before"] = statistics.median(run["probes"]["before"]["rss"] for run in result.runs)
            row["rss_open"] = statistics.median(run["probes"]["more"]["rss"] for run in result.runs)
            base = bare_idle.get(variant.stack)
            if base is not None and base.runs:
                base_per = statistics.median(_added(run, "rss") / n for run in base.runs)
                base_first = statistics.median(
                    (run["probes"]["open"]["rss"] - run["probes"]["before"]["rss"]) / n for run in base.runs
                )
                base_open = statistics.median(run["probes"]["more"]["rss"] for run in base.runs)
                row["rss_per_connection_ratio"] = row["rss_per_connection"] / base_per if base_per > 0 else None
                row["rss_first_ratio"] = row["rss_first_per_connection"] / base_first if base_first > 0 else None
                row["rss_total_ratio"] = row["rss_open"] / base_open
        else:
            for what in ("rss", "blocks", "objects"):
                row[f"{what}_per_message"] = statistics.median(
                    (run["probes"]["last"][what] - run["probes"]["first"][what]) / (run["done"] - run["first"])
                    for run in result.runs
                )
            row["messages"] = statistics.median(run["done"] for run in result.runs)
            row["rate_median"] = statistics.median(run["rate"] for run in result.runs)
            spans = [run["spans"] for run in result.runs if run.get("spans") is not None]
            row["spans_per_run"] = statistics.median(spans) if spans else None
    return rows


def own_cost(results: dict[Variant, Result]) -> list[dict[str, Any]]:
    """wstrace's cost per message on top of the hand-written minimal instrumentation, same run, paired by rep."""
    rows = []
    by_key = {(v.workload, v.stack, v.name): r for v, r in results.items()}
    pairs = [
        ("echo64", "wstrace message, envelope off", "minimal (raw API), envelope off", 2),
        ("echo64", "wstrace message, envelope off, metrics off", "minimal (raw API), envelope off", 2),
        ("echo64", "wstrace message, envelope on", "minimal (raw API), envelope on", 2),
        ("echo16k", "wstrace message, envelope off", "minimal (raw API), envelope off", 2),
        ("stream", "wstrace span per message (streams off)", "minimal (raw API), span per message", 1),
    ]
    for stack in STACKS:
        for workload, ours, theirs, messages in pairs:
            a, b = by_key.get((workload, stack, ours)), by_key.get((workload, stack, theirs))
            if a is None or b is None:
                continue
            diffs = [(1e6 / x - 1e6 / y) / messages for x, y in paired(a, b)]
            if diffs:
                rows.append(
                    {
                        "workload": workload,
                        "stack": stack,
                        "variant": ours,
                        "against": theirs,
                        "us_per_message": statistics.median(diffs),
                        "us_min": min(diffs),
                        "us_max": max(diffs),
                    }
                )
    return rows


def _ratio(
    rows: list[dict[str, Any]], workload: str, stack: str, variant: str, key: str = "ratio_median"
) -> Optional[float]:
    for row in rows:
        if (row["workload"], row["stack"], row["variant"]) == (workload, stack, variant):
            value = row.get(key)
            return float(value) if value is not None else None
    return None


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, checked against this run."""
    rows = report["rows"]
    found: list[dict[str, Any]] = []

    def check(name: str, value: Optional[float], goal: float, higher: bool = True, unit: str = "") -> None:
        met = None if value is None else (value >= goal if higher else value <= goal)
        found.append({"target": name, "value": value, "goal": goal, "higher_is_better": higher, "met": met})
        found[-1]["unit"] = unit

    for stack in STACKS:
        for variant, goal in (
            ("wstrace message, envelope off", 0.65),
            ("wstrace message, envelope on", 0.60),
            ("wstrace sampled out", 0.90),
        ):
            value = _ratio(rows, "echo64", stack, variant)
            if value is not None:
                check(f"echo64 {stack}: {variant}, ratio to bare", value, goal)
            # The server's CPU per round trip, bare / variant: the same goal with the machine's noise mostly out
            # (stricter than the rate: the client's share of a round trip is left out).
            value = _ratio(rows, "echo64", stack, variant, "cpu_ratio_median")
            if value is not None:
                check(f"echo64 {stack}: {variant}, server CPU per round trip, bare / variant", value, goal)
        value = _ratio(rows, "stream", stack, "wstrace stream metrics, envelope off")
        if value is not None:
            check(f"stream {stack}: stream metrics, ratio to bare", value, 0.85)
    # The trace-shapes issue: a reply stream unpinned, a worker's pushes, a client's uplink (docs/streams.md).
    for workload, variant in (
        ("stream-unpinned", "wstrace stream metrics, envelope off"),
        ("stream-unpinned", "wstrace stream metrics, envelope on"),
        ("push", "wstrace push run, envelope off"),
        ("push", "wstrace push run, envelope on"),
        ("uplink", "wstrace client, envelope off"),
        ("uplink", "wstrace client, envelope on"),
    ):
        for stack in STACKS:
            value = _ratio(rows, workload, stack, variant)
            if value is not None:
                check(f"{workload} {stack}: {variant}, ratio to bare", value, 0.85)
            # The same goal on CPU per message of the instrumented side (bare CPU / variant CPU): what the
            # throughput would be where that side is the bottleneck, with the machine's noise mostly left out.
            value = _ratio(rows, workload, stack, variant, "cpu_ratio_median")
            if value is not None:
                check(f"{workload} {stack}: {variant}, CPU per message, bare / variant", value, 0.85)
    for row in report["own_cost"]:
        check(
            f"{row['workload']} {row['stack']}: wstrace own cost vs minimal ({row['variant']})",
            row["us_per_message"],
            3.0,
            higher=False,
            unit="µs/message",
        )
    for row in report["memory"]:
        if row["workload"] == "idle" and row["variant"] != "bare" and row.get("rss_per_connection_ratio") is not None:
            name = f"idle {row['stack']}: {row['variant']}, RSS per connection / bare"
            check(name, row["rss_per_connection_ratio"], 1.3, higher=False)
        if row["workload"] == "long" and row["variant"] == "wstrace connection" and "rss_per_message" in row:
            check(
                f"long {row['stack']}: {row['variant']}, pymalloc blocks held per message",
                row["blocks_per_message"],
                0.01,
                higher=False,
                unit="blocks/message",
            )
    return found


def _fmt(value: Optional[float], spec: str) -> str:
    return "" if value is None else format(value, spec)


def tables(report: dict[str, Any]) -> str:
    out = [
        "| workload | stack | variant | rate/s, median (min-max) | ratio to bare, paired median (min-max)"
        " | extra µs per unit | p50 µs | p50 ratio | spans/run |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["rows"]:
        if "rate_median" not in row:
            out.append(f"| {row['workload']} | {row['stack']} | {row['variant']} | failed | | | | | |")
            continue
        rate = f"{row['rate_median']:,.0f} ({row['rate_min']:,.0f}-{row['rate_max']:,.0f})"
        ratio = ""
        if "ratio_median" in row:
            ratio = f"{row['ratio_median']:.2f} ({row['ratio_min']:.2f}-{row['ratio_max']:.2f})"
        extra = f"{row['extra_us']:+.1f} / {row['per']}" if "extra_us" in row else ""
        out.append(
            f"| {row['workload']} | {row['stack']} | {row['variant']} | {rate} | {ratio} | {extra}"
            f" | {_fmt(row.get('p50_us_median'), '.0f')} | {_fmt(row.get('p50_ratio_median'), '.2f')}"
            f" | {_fmt(row.get('spans_per_run'), '.0f')} |"
        )
    cpu_rows = [row for row in report["rows"] if "cpu_us_median" in row]
    if cpu_rows:
        out += [
            "",
            "| CPU of the instrumented side | stack | variant | CPU µs per message, median (min-max)"
            " | bare CPU / variant CPU, paired median (min-max) | extra CPU µs per message |",
            "|---|---|---|---:|---:|---:|",
        ]
        for row in cpu_rows:
            ratio = extra = ""
            if "cpu_ratio_median" in row:
                ratio = f"{row['cpu_ratio_median']:.2f} ({row['cpu_ratio_min']:.2f}-{row['cpu_ratio_max']:.2f})"
                extra = f"{row['cpu_extra_us']:+.2f}"
            out.append(
                f"| {row['workload']} | {row['stack']} | {row['variant']}"
                f" | {row['cpu_us_median']:.2f} ({row['cpu_us_min']:.2f}-{row['cpu_us_max']:.2f}) | {ratio} | {extra} |"
            )
    if report["own_cost"]:
        out += [
            "",
            "| wstrace's own cost | stack | against (same run) | µs per message, paired median (min-max) |",
            "|---|---|---|---:|",
        ]
        for row in report["own_cost"]:
            out.append(
                f"| {row['workload']}: {row['variant']} | {row['stack']} | {row['against']}"
                f" | {row['us_per_message']:+.1f} ({row['us_min']:+.1f} to {row['us_max']:+.1f}) |"
            )
    idle = [row for row in report["memory"] if row["workload"] == "idle" and "rss_open" in row]
    if idle:
        out += [
            "",
            "| idle connections | stack | variant | RSS before → with both batches (MiB)"
            " | RSS per connection, second batch (KiB) | ratio to bare | first batch (KiB) | ratio to bare"
            " | ratio to bare (total RSS) | pymalloc blocks / GC objects per connection |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in idle:
            out.append(
                f"| {row['connections']} + {row['connections']} | {row['stack']} | {row['variant']}"
                f" | {row['rss_before'] / 2**20:.1f} → {row['rss_open'] / 2**20:.1f}"
                f" | {row['rss_per_connection'] / 1024:.1f} | {_fmt(row.get('rss_per_connection_ratio'), '.2f')}"
                f" | {row['rss_first_per_connection'] / 1024:.1f} | {_fmt(row.get('rss_first_ratio'), '.2f')}"
                f" | {_fmt(row.get('rss_total_ratio'), '.2f')}"
                f" | {row['blocks_per_connection']:.0f} / {row['objects_per_connection']:.0f} |"
            )
    long_rows = [row for row in report["memory"] if row["workload"] == "long" and "rss_per_message" in row]
    if long_rows:
        out += [
            "",
            "| one long connection | stack | variant | messages | rate/s | RSS growth per message (B)"
            " | pymalloc blocks per message | GC objects per message | spans/run |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for row in long_rows:
            out.append(
                f"| long | {row['stack']} | {row['variant']} | {row['messages']:,.0f} | {row['rate_median']:,.0f}"
                f" | {row['rss_per_message']:.2f} | {row['blocks_per_message']:.3f} | {row['objects_per_message']:.3f}"
                f" | {_fmt(row.get('spans_per_run'), '.0f')} |"
            )
    if report["targets"]:
        out += ["", "| target | this run | goal | met |", "|---|---:|---:|---|"]
        for row in report["targets"]:
            sign = "≥" if row["higher_is_better"] else "≤"
            met = {True: "yes", False: "**no**", None: "n/a"}[row["met"]]
            out.append(
                f"| {row['target']} | {_fmt(row['value'], '.2f')} {row['unit']} | {sign} {row['goal']} | {met} |"
            )
    return "\n".join(out)


def machine() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), cpu)
    except OSError:
        pass
    versions: dict[str, Optional[str]] = {}
    for package in (
        "wstrace",
        "websockets",
        "aiohttp",
        "starlette",
        "uvicorn",
        "tornado",
        "opentelemetry-sdk",
        "opentelemetry-instrumentation-asgi",
        "ddtrace",
    ):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    if ddtrace_available() and versions["ddtrace"] is None:
        import ddtrace  # type: ignore[import-not-found,unused-ignore]  # noqa: PLC0415

        versions["ddtrace"] = str(ddtrace.__version__)
    import wstrace  # noqa: PLC0415

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "versions": versions,
        "wstrace_source": str(Path(wstrace.__file__).parent),
    }


def choose(args: argparse.Namespace) -> list[Variant]:
    stacks = set(args.stacks.split(",")) if args.stacks else set(STACKS)
    workloads = set(args.workloads.split(",")) if args.workloads else set(WORKLOADS)
    chosen = [v for v in variants() if v.stack in stacks and v.workload in workloads]
    if args.only:
        wanted = [v for v in chosen if args.only in v.key]
        groups = {(v.workload, v.stack) for v in wanted}
        chosen = [v for v in chosen if v in wanted or (v.bare and (v.workload, v.stack) in groups)]
    skipped = [v for v in chosen if v.needs == "ddtrace" and not ddtrace_available()]
    if skipped:
        print("ddtrace is not installed (make bench-deps): skipping its variants", file=sys.stderr)
    return [v for v in chosen if v not in skipped]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="smaller counts and 1 rep, for development")
    p.add_argument("--only", default="", help="variants whose 'workload stack name' contains this (+ their bare)")
    p.add_argument("--stacks", default="", help=f"comma-separated, among {','.join(STACKS)}")
    p.add_argument("--workloads", default="", help=f"comma-separated, among {','.join(WORKLOADS)}")
    p.add_argument("--echo-count", type=int, default=5000)
    p.add_argument("--echo16k-count", type=int, default=2000)
    p.add_argument("--stream-count", type=int, default=10_000, help="stream and stream-unpinned: chunks")
    p.add_argument("--push-count", type=int, default=10_000, help="push: chunks the server's worker pushes")
    p.add_argument("--uplink-count", type=int, default=10_000, help="uplink: messages the client sends")
    p.add_argument("--rounds", type=int, default=5, help="stream-unpinned, push, uplink: measured rounds per run")
    p.add_argument("--fast-read", action="store_true", help="stream, push: the client reads with no wait_for")
    p.add_argument("--connections", type=int, default=1000)
    p.add_argument("--concurrent-count", type=int, default=5, help="round trips per connection")
    p.add_argument("--long-count", type=int, default=100_000)
    p.add_argument("--deadline", type=int, default=60, help="seconds one client may run at most")
    p.add_argument("--budget-minutes", type=float, default=15.0, help="start no rep that would end past this")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "latest.json")
    p.add_argument("--markdown", type=Path, help="also write the tables here")
    p.add_argument("--unpinned", action="store_true", help="run every variant unpinned (no taskset)")
    p.add_argument("--list", action="store_true", help="list the chosen variants and exit")
    add_compiled_argument(p)
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = parser().parse_args(argv)
    if args.quick:
        args.reps = 1 if args.reps == 3 else args.reps
        args.echo_count, args.echo16k_count = min(args.echo_count, 2000), min(args.echo16k_count, 500)
        args.long_count, args.connections = min(args.long_count, 20_000), min(args.connections, 300)
        args.rounds = min(args.rounds, 2)
    counts = {
        "echo64": args.echo_count,
        "echo16k": args.echo16k_count,
        "stream": args.stream_count,
        "push": args.push_count,
        "uplink": args.uplink_count,
        "rounds": args.rounds,
        "server_cpu": 1,  # run_once answers the client's "cpu" requests (profile and timers do not)
        "fast_read": int(args.fast_read),
        "connections": args.connections,
        "concurrent": args.concurrent_count,
        "long": args.long_count,
        "deadline": args.deadline,
    }
    chosen = choose(args)
    if args.list or not chosen:
        for v in chosen:
            print(v.key)
        return 0 if chosen else 1
    if args.compiled is not None:
        use_compiled(args.compiled)
    results = {v: Result(v) for v in chosen}
    started = time.monotonic()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    log_path = args.out.with_suffix(".log")
    reps_done = 0
    with open(log_path, "w") as log:
        for rep in range(args.reps):
            elapsed = time.monotonic() - started
            if rep and elapsed / rep * (rep + 1) > args.budget_minutes * 60:
                print(f"stopping after {rep} reps: the next would exceed --budget-minutes", file=sys.stderr)
                break
            order = chosen if rep % 2 == 0 else list(reversed(chosen))
            for i, variant in enumerate(order):
                result = results[variant]
                try:
                    outcome = run_once(variant, counts, log, pin=not args.unpinned)
                except Exception as exc:
                    result.failures.append(f"rep {rep + 1}: {exc}")
                    print(f"rep {rep + 1} {variant.key}: FAILED ({exc}); see {log_path}", file=sys.stderr)
                    continue
                outcome["rep"] = rep
                result.runs.append(outcome)
                print(
                    f"rep {rep + 1}/{args.reps} [{i + 1}/{len(order)}] {variant.key:70} {outcome['rate']:10,.0f}/s",
                    file=sys.stderr,
                )
            reps_done += 1
    report: dict[str, Any] = {"rows": summarise(results), "memory": memory_rows(results, counts)}
    report["own_cost"] = own_cost(results)
    report["targets"] = targets(report)
    report["machine"] = machine()
    report["counts"] = counts
    report["unpinned"] = args.unpinned
    report["compiled"] = None if args.compiled is None else str(args.compiled)
    report["reps"] = reps_done
    report["seconds"] = round(time.monotonic() - started, 1)
    report["command"] = shlex.join([Path(sys.executable).name, "-m", "benchmarks.run", *(argv or sys.argv[1:])])
    report["runs"] = [
        {"workload": v.workload, "stack": v.stack, "variant": v.name, "runs": r.runs} for v, r in results.items()
    ]
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    text = tables(report)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    print(text)
    print(f"\n{reps_done} reps in {report['seconds']:.0f} s; JSON: {args.out}; log: {log_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
