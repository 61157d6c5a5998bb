"""Run benchmark variants interleaved (A B C … A B C …) and report medians and ratios to bare.

    python -m benchmarks.run [--reps 5] [--only SUBSTRING] [--out benchmarks/results/latest.json]

Every run starts a fresh server process (pinned to CPU 0 when taskset exists) and a fresh measuring
client (CPU 1), on 127.0.0.1 only, bounded by a count and a timeout. A variant's ratio is paired by rep:
rep i of the variant against rep i of its workload's bare run, then the median is taken.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import free_port


ROOT = Path(__file__).resolve().parent.parent


OFF = ("--wstrace", "--envelope", "off")


@dataclass(frozen=True)
class Variant:
    workload: str  # echo64, echo16k, stream
    name: str
    server: tuple[str, ...] = ()
    traced_peer: bool = False
    bare: bool = False


def variants() -> list[Variant]:
    found = []
    for workload in ("echo64", "echo16k"):
        found += [
            Variant(workload, "bare", bare=True),
            Variant(workload, "wstrace message model, envelope off", ("--wstrace", "--envelope", "off")),
            Variant(workload, "wstrace message model, envelope on", ("--wstrace",), traced_peer=True),
            Variant(
                workload,
                "wstrace connection model, envelope off",
                ("--wstrace", "--model", "connection", "--envelope", "off"),
            ),
            Variant(workload, "wstrace handshake sampled out", ("--wstrace", "--sampled-out")),
        ]
    found += [
        Variant("stream", "bare", bare=True),
        Variant("stream", "wstrace stream metrics, envelope off", ("--wstrace", "--envelope", "off")),
        Variant("stream", "wstrace stream metrics, envelope on", ("--wstrace",), traced_peer=True),
        Variant("stream", "wstrace per-chunk spans, envelope off", ("--wstrace", "--envelope", "off", "--chunk-spans")),
        Variant(
            "stream", "wstrace span per message (streams off)", ("--wstrace", "--envelope", "off", "--streams", "off")
        ),
    ]
    return found


@dataclass
class Result:
    variant: Variant
    rates: list[float] = field(default_factory=list)
    p50: list[float] = field(default_factory=list)
    spans: list[int] = field(default_factory=list)


def pinned(cpu: int, argv: list[str]) -> list[str]:
    if shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
        return ["taskset", "-c", str(cpu), *argv]
    return argv


def run_once(variant: Variant, counts: dict[str, int]) -> dict[str, Any]:
    port = free_port()
    server = subprocess.Popen(
        pinned(0, [sys.executable, "-m", "benchmarks.server", "--port", str(port), *variant.server]),
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert server.stdout is not None
        if server.stdout.readline().strip() != "ready":
            raise RuntimeError(f"server for {variant.name} did not start")
        workload = "stream" if variant.workload == "stream" else "echo"
        size = "16384" if variant.workload == "echo16k" else "64"
        client = [sys.executable, "-m", "benchmarks.client", f"ws://127.0.0.1:{port}/bench", "--workload", workload]
        client += ["--count", str(counts[variant.workload]), "--size", size]
        if variant.traced_peer:
            client.append("--traced-peer")
        out = subprocess.run(pinned(1, client), capture_output=True, text=True, cwd=ROOT, timeout=120, check=True)
        result: dict[str, Any] = json.loads(out.stdout)
    finally:
        server.terminate()
        rest, _ = server.communicate(timeout=30)
    spans = [int(line.split()[1]) for line in rest.splitlines() if line.startswith("spans ")]
    result["spans"] = spans[0] if spans else None
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--only", default="", help="run workloads/variants whose name contains this")
    parser.add_argument("--echo-count", type=int, default=5000)
    parser.add_argument("--stream-count", type=int, default=10000)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "latest.json")
    args = parser.parse_args()
    counts = {"echo64": args.echo_count, "echo16k": args.echo_count // 2, "stream": args.stream_count}
    chosen = [v for v in variants() if v.bare or args.only in f"{v.workload} {v.name}"]
    workloads = {v.workload for v in chosen if not v.bare}
    chosen = [v for v in chosen if v.workload in workloads]
    results = {v: Result(v) for v in chosen}
    started = time.time()
    for rep in range(args.reps):
        for variant in chosen:
            outcome = run_once(variant, counts)
            result = results[variant]
            result.rates.append(outcome["rate"])
            result.p50.append(outcome.get("p50_us", 0.0))
            result.spans.append(outcome["spans"] or 0)
            print(
                f"rep {rep + 1}/{args.reps} {variant.workload:8} {variant.name:45} {outcome['rate']:10,.0f}/s",
                file=sys.stderr,
            )
    report = summarise(results, counts)
    report["machine"] = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()}
    report["seconds"] = round(time.time() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))


def summarise(results: dict[Variant, Result], counts: dict[str, int]) -> dict[str, Any]:
    rows = []
    bare = {v.workload: r for v, r in results.items() if v.bare}
    for variant, result in results.items():
        base = bare[variant.workload]
        ratios = [a / b for a, b in zip(result.rates, base.rates, strict=True)]
        extra = 1e6 / statistics.median(result.rates) - 1e6 / statistics.median(base.rates)
        rows.append(
            {
                "workload": variant.workload,
                "variant": variant.name,
                "count": counts[variant.workload],
                "rate_median": statistics.median(result.rates),
                "rate_min": min(result.rates),
                "rate_max": max(result.rates),
                "ratio_median": statistics.median(ratios),
                "ratio_min": min(ratios),
                "ratio_max": max(ratios),
                "extra_us_per_unit": extra,
                "p50_us_median": statistics.median(result.p50) if result.p50 and result.p50[0] else None,
                "spans_per_run": statistics.median(result.spans),
                "reps": len(result.rates),
            }
        )
    return {"rows": rows}


def table(report: dict[str, Any]) -> str:
    lines = [
        "| workload | variant | rate/s median (min-max) | ratio to bare, median (min-max)"
        " | extra µs per message or round trip | p50 µs | spans/run |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in report["rows"]:
        p50 = f"{row['p50_us_median']:.0f}" if row["p50_us_median"] else ""
        rate = f"{row['rate_median']:,.0f} ({row['rate_min']:,.0f}-{row['rate_max']:,.0f})"
        ratio = f"{row['ratio_median']:.2f} ({row['ratio_min']:.2f}-{row['ratio_max']:.2f})"
        lines.append(
            f"| {row['workload']} | {row['variant']} | {rate} | {ratio} | {row['extra_us_per_unit']:+.1f}"
            f" | {p50} | {row['spans_per_run']:.0f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
