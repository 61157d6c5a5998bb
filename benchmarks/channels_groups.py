"""Django Channels: ``group_send`` to 100 consumers in two processes through a real redis-server, bare and traced.

    python -m benchmarks.channels_groups [--reps 5] [--sends 200] [--consumers 50] [--layer redis|pubsub] [--json OUT]
        [--variants bare,wstrace,wstrace-first]
    python -m benchmarks.channels_groups --instructions [--consumers 50] [--variants ...]
    python -m benchmarks.channels_groups --profile OUT [--variants wstrace]

Not part of ``make bench``. A private redis-server runs for the whole benchmark. Each run starts, in fresh
processes, two consumer processes (``--consumers`` Channels ``AsyncConsumer``s each, all in the group
``bench``, each counting the events its handler gets) and one sender process, which calls
``channel_layer.group_send("bench", event)`` ``--sends`` times in a row and waits until both consumer processes
have handled every event (``--sends`` * 2 * ``--consumers`` handler calls). The throughput is those handler
calls divided by the time from the first ``group_send`` to the last handler call.

Variants: ``bare`` (no wstrace anywhere) and ``wstrace`` (``ChannelsInstrumentor`` in all three processes,
default options, the real SDK with a discarding exporter: a ``send bench`` span per ``group_send``, the carrier
in each event, and a ``process bench`` span around every handler call). They run interleaved (A B, then B A);
each ``wstrace`` run's ratio is taken to the ``bare`` run of its pair, and the medians are reported.
``wstrace-first`` is ``wstrace`` with ``group_spans="first"`` in the consumer processes (one ``process`` span
per group message per process); ``--variants`` picks which run, in that rotating order.

``--instructions`` and ``--profile`` look at one consumer process's dispatch alone, in-process and without
Redis: ``--consumers`` ``AsyncConsumer``s, each fed by a queue, get the same event dict (with a carrier, as a
traced sender's ``group_send`` delivers it through ``channels_redis``' core layer), group message after group
message. ``--instructions`` runs it under ``valgrind --tool=cachegrind --cache-sim=no`` with 20 and 60 group
messages and reports the difference per handler call (load-independent); ``--profile OUT`` runs it under cProfile
(``OUT.<variant>``) and prints the top functions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("bare", "wstrace", "wstrace-first")
GROUP = "bench"
EVENT = {"type": "bench.event", "text": "tick", "n": 1}


def _layer_config(kind: str, port: int) -> dict[str, Any]:
    host = {"address": f"redis://127.0.0.1:{port}", "socket_timeout": 15}
    backend = (
        "channels_redis.core.RedisChannelLayer" if kind == "redis" else "channels_redis.pubsub.RedisPubSubChannelLayer"
    )
    config: dict[str, Any] = {"hosts": [host]}
    if kind == "redis":
        config["capacity"] = 1_000_000  # nothing dropped for being over capacity
    return {"BACKEND": backend, "CONFIG": config}


_TELEMETRY: list[Any] = []
"""The traced variants' tracer provider and span exporter (which counts the spans), in a child process."""


def _spans_made() -> int:
    """Spans ended in this process so far (0 when bare)."""
    if not _TELEMETRY:
        return 0
    provider, spans = _TELEMETRY
    provider.force_flush()
    return int(spans.count)


def _setup(variant: str, kind: str, port: int) -> None:
    import django  # noqa: PLC0415
    from django.conf import settings  # noqa: PLC0415

    layers = {"default": _layer_config(kind, port)} if kind != "none" else {}
    settings.configure(INSTALLED_APPS=["channels"], DATABASES={}, CHANNEL_LAYERS=layers)
    django.setup()
    if variant != "bare":
        from benchmarks.common import sdk  # noqa: PLC0415
        from wstrace.instrumentation.channels import ChannelsInstrumentor  # noqa: PLC0415

        tracer_provider, meter_provider, spans = sdk()
        _TELEMETRY.extend((tracer_provider, spans))
        options = {"group_spans": "first"} if variant == "wstrace-first" else {}
        ChannelsInstrumentor().instrument(tracer_provider=tracer_provider, meter_provider=meter_provider, **options)


def _say(**fields: Any) -> None:
    print("BENCH " + json.dumps(fields), flush=True)


# Consumer process -------------------------------------------------------------------------------------------


async def _consume(count: int, expected: int) -> None:
    from channels.consumer import AsyncConsumer  # noqa: PLC0415

    handled = 0
    joined = 0
    all_joined = asyncio.Event()
    finished = asyncio.Event()
    last = 0.0

    class Sink(AsyncConsumer):  # type: ignore[misc]
        async def bench_join(self, event: dict[str, Any]) -> None:
            nonlocal joined
            await self.channel_layer.group_add(GROUP, self.channel_name)
            joined += 1
            if joined == count:
                all_joined.set()

        async def bench_warm(self, event: dict[str, Any]) -> None:
            pass  # the sender's first group_send, before the clock starts

        async def bench_event(self, event: dict[str, Any]) -> None:
            nonlocal handled, last
            handled += 1
            if handled == expected:
                last = time.time()
                finished.set()

    def start(consumer: Any) -> asyncio.Task[Any]:
        inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        inbox.put_nowait({"type": "bench.join"})

        async def send(message: Any) -> None:
            pass

        return asyncio.create_task(consumer({"type": "channel"}, inbox.get, send))

    tasks = [start(Sink()) for _ in range(count)]
    await asyncio.wait_for(all_joined.wait(), 30)
    spans = _spans_made()
    _say(event="ready")
    cpu = time.process_time()
    profile_to = os.environ.get("BENCH_PROFILE")  # a file: cProfile of the handling, for looking into costs
    profiler = None
    if profile_to:
        import cProfile  # noqa: PLC0415

        profiler = cProfile.Profile()
        profiler.enable()
    await asyncio.wait_for(finished.wait(), 300)
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(f"{profile_to}.{os.getpid()}")
    cpu = time.process_time() - cpu  # every thread of the process: the span processor's too
    spans = _spans_made() - spans
    _say(event="done", last=last, handled=handled, cpu=cpu, consumers=len(tasks), spans=spans)
    # Consumers blocked in channels_redis' receive take their time to cancel: the run is over, leave now.
    os._exit(0)


# Sender process ---------------------------------------------------------------------------------------------


async def _send(sends: int) -> None:
    from channels.layers import get_channel_layer  # noqa: PLC0415

    layer = get_channel_layer()
    await layer.group_send(GROUP, {"type": "bench.warm"})  # connections made before the clock starts
    _say(event="ready")
    sys.stdin.readline()  # the driver says go once the consumers are ready
    first = time.time()
    for i in range(sends):
        await layer.group_send(GROUP, dict(EVENT, n=i))
    _say(event="sent", first=first, elapsed=time.time() - first)
    close = getattr(layer, "close_pools", None)
    if close is not None:
        await close()


# One consumer process's dispatch, in-process (--instructions, --profile) ---------------------------------------


async def _dispatch(consumers: int, messages: int, profile_to: str = "") -> None:
    """``messages`` group messages to ``consumers`` consumers of this process (after 10 to warm up)."""
    from channels.consumer import AsyncConsumer  # noqa: PLC0415

    from wstrace.instrumentation.channels._layers import KEY  # noqa: PLC0415

    handled = 0
    finished = asyncio.Event()

    class Sink(AsyncConsumer):  # type: ignore[misc]
        async def bench_event(self, event: dict[str, Any]) -> None:
            nonlocal handled
            handled += 1
            if handled % consumers == 0:
                finished.set()

    queues: list[asyncio.Queue[dict[str, Any]]] = [asyncio.Queue() for _ in range(consumers)]

    async def send(message: Any) -> None:
        pass

    # No channel layer configured: each consumer dispatches what its queue gives it, as a layer event.
    tasks = [asyncio.create_task(Sink()({"type": "channel"}, q.get, send)) for q in queues]

    async def broadcast(count: int, first: int) -> None:
        for n in range(first, first + count):
            # What channels_redis' core layer hands to every consumer of a process: one dict, with the carrier.
            carrier = {"traceparent": f"00-{0x5EED:032x}-{n + 1:016x}-01", "destination": GROUP}
            event = dict(EVENT, n=n, **{KEY: carrier})
            for q in queues:
                q.put_nowait(event)
            await finished.wait()
            finished.clear()

    await broadcast(10, 0)
    profiler = None
    if profile_to:
        import cProfile  # noqa: PLC0415

        profiler = cProfile.Profile()
        profiler.enable()
    await broadcast(messages, 10)
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(profile_to)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


_VALGRIND = ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null"]


def _instructions(variant: str, consumers: int, messages: int) -> int:
    import re  # noqa: PLC0415

    command = [*_VALGRIND, sys.executable, "-m", "benchmarks.channels_groups", "dispatch", variant, "none", "0"]
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'src'}:{ROOT}", PYTHONHASHSEED="0")
    env = {k: v for k, v in env.items() if not k.startswith(("WSTRACE_", "OTEL_"))}
    args = [*command, str(consumers), str(messages)]
    done = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, env=env, timeout=900, check=True)
    found = re.search(r"I\s+refs:\s+([\d,]+)", done.stderr)
    if found is None:
        raise SystemExit(f"no instruction count from valgrind:\n{done.stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


def instructions(variants: list[str], consumers: int) -> None:
    """Instructions per handler call of each variant's dispatch (60 minus 20 group messages)."""
    print("| variant | instructions per handler call | over bare |")
    print("|---|---:|---:|")
    bare = 0.0
    for variant in variants:
        per_call = (_instructions(variant, consumers, 60) - _instructions(variant, consumers, 20)) / (40 * consumers)
        if variant == "bare":
            bare = per_call
        over = f"+{per_call - bare:,.0f}" if bare and variant != "bare" else ""
        print(f"| {variant} | {per_call:,.0f} | {over} |", flush=True)


def profile(variants: list[str], consumers: int, out: str) -> None:
    """cProfile of each variant's dispatch (200 group messages), saved to ``out.<variant>``; the top functions."""
    import pstats  # noqa: PLC0415

    for variant in variants:
        target = f"{out}.{variant}"
        args = [sys.executable, "-m", "benchmarks.channels_groups", "dispatch", variant, "none", "0"]
        env = dict(os.environ, PYTHONPATH=f"{ROOT / 'src'}:{ROOT}", BENCH_PROFILE=target)
        env = {k: v for k, v in env.items() if not k.startswith(("WSTRACE_", "OTEL_"))}
        subprocess.run([*args, str(consumers), "200"], cwd=ROOT, env=env, timeout=600, check=True)
        print(f"== {variant} ({200 * consumers} handler calls): {target}")
        pstats.Stats(target).sort_stats("tottime").print_stats(25)


# Driver -----------------------------------------------------------------------------------------------------


@contextmanager
def _redis() -> Iterator[int]:
    server = shutil.which("redis-server") or "/usr/bin/redis-server"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    with tempfile.TemporaryDirectory() as tmp:
        args = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", tmp]
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), 0.2).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)
            yield port
        finally:
            proc.terminate()
            proc.wait(10)


class _Proc:
    def __init__(self, args: list[str]) -> None:
        env = dict(os.environ, PYTHONPATH=f"{ROOT / 'src'}:{ROOT}")
        env = {k: v for k, v in env.items() if not k.startswith(("WSTRACE_", "OTEL_"))}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.channels_groups", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )

    def wait_for(self, event: str) -> dict[str, Any]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("BENCH "):
                fields: dict[str, Any] = json.loads(line[6:])
                if fields["event"] == event:
                    return fields
        raise RuntimeError(f"process ended before {event!r} (exit {self.proc.wait()})")

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def finish(self) -> None:
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _flush(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"FLUSHALL\r\n")
        sock.recv(64)


def run_once(variant: str, kind: str, port: int, sends: int, consumers: int) -> tuple[float, float, float]:
    """Handler calls per second for one run of ``variant``, the consumer processes' CPU µs per call, and the
    ``process`` spans they made per group message and process."""
    _flush(port)
    expected = sends * consumers
    common = [variant, kind, str(port)]
    sinks = [_Proc(["consumer", *common, str(consumers), str(expected)]) for _ in range(2)]
    for sink in sinks:
        sink.wait_for("ready")
    sender = _Proc(["sender", *common, str(sends)])
    sender.wait_for("ready")
    sender.go()
    sent = sender.wait_for("sent")
    done = [sink.wait_for("done") for sink in sinks]
    for proc in (sender, *sinks):
        proc.finish()
    elapsed = max(d["last"] for d in done) - sent["first"]
    per_message = sum(d["spans"] for d in done) / (2 * sends)
    return 2 * expected / elapsed, sum(d["cpu"] for d in done) / (2 * expected) * 1e6, per_message


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--sends", type=int, default=200)
    parser.add_argument("--consumers", type=int, default=50, help="per process (two processes)")
    parser.add_argument("--layer", choices=("redis", "pubsub"), default="redis")
    parser.add_argument("--variants", default="bare,wstrace", help=f"comma-separated, among {','.join(VARIANTS)}")
    parser.add_argument("--instructions", action="store_true", help="instructions per handler call (valgrind)")
    parser.add_argument("--profile", metavar="OUT", help="cProfile of one process's dispatch, to OUT.<variant>")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    chosen = [v for v in args.variants.split(",") if v]
    unknown = set(chosen) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants: {', '.join(sorted(unknown))}")
    if args.instructions:
        instructions(chosen, args.consumers)
        return
    if args.profile:
        profile(chosen, args.consumers, args.profile)
        return
    if "bare" not in chosen:
        parser.error("the throughput runs need the bare variant (each ratio is to its rep's bare run)")
    results: dict[str, list[float]] = {v: [] for v in chosen}
    cpu: dict[str, list[float]] = {v: [] for v in chosen}
    ratios: dict[str, list[float]] = {v: [] for v in chosen if v != "bare"}
    with _redis() as port:
        run_once("bare", args.layer, port, 20, args.consumers)  # warm-up: imports, page cache
        for rep in range(args.reps):
            order = chosen if rep % 2 == 0 else list(reversed(chosen))
            measured = {v: run_once(v, args.layer, port, args.sends, args.consumers) for v in order}
            for v, (rate, per_call, _) in measured.items():
                results[v].append(rate)
                cpu[v].append(per_call)
                if v != "bare":
                    ratios[v].append(rate / measured["bare"][0])
            print(
                f"rep {rep + 1}: "
                + ", ".join(
                    f"{v} {measured[v][0]:,.0f}/s ({measured[v][1]:.0f} µs CPU/call"
                    + (f", {measured[v][2]:.2f} spans per group message and process)" if v != "bare" else ")")
                    + (f" ratio {ratios[v][-1]:.3f}" if v != "bare" else "")
                    for v in chosen
                ),
                flush=True,
            )
    summary: dict[str, Any] = {
        "layer": args.layer,
        "sends": args.sends,
        "consumers": 2 * args.consumers,
        "median_per_s": {v: statistics.median(r) for v, r in results.items()},
        "cpu_us_per_call": {v: statistics.median(c) for v, c in cpu.items()},
        "ratio_median": {v: statistics.median(r) for v, r in ratios.items()},
        "ratio_range": {v: [min(r), max(r)] for v, r in ratios.items()},
        "runs": results,
        "cpu_runs": cpu,
    }
    print(f"group_send to {2 * args.consumers} consumers in 2 processes ({args.layer}), medians of {args.reps}:")
    for v in chosen:
        rate, per_call = summary["median_per_s"][v], summary["cpu_us_per_call"][v]
        line = f"  {v}: {rate:,.0f} handler calls/s, {per_call:.0f} µs CPU/call"
        if v != "bare":
            low, high = summary["ratio_range"][v]
            line += f", ratio {summary['ratio_median'][v]:.3f} ({low:.3f}..{high:.3f})"
        print(line)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("consumer", "sender", "dispatch"):
        role, variant, kind, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
        _setup(variant, kind, port)
        if role == "dispatch":
            asyncio.run(_dispatch(int(sys.argv[5]), int(sys.argv[6]), os.environ.get("BENCH_PROFILE", "")))
        elif role == "consumer":
            asyncio.run(_consume(int(sys.argv[5]), int(sys.argv[6])))
        else:
            asyncio.run(_send(int(sys.argv[5])))
    else:
        main()
