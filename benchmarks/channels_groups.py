"""Django Channels: ``group_send`` to 100 consumers in two processes through a real redis-server, bare and traced.

    python -m benchmarks.channels_groups [--reps 5] [--sends 200] [--consumers 50] [--layer redis|pubsub] [--json OUT]

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
VARIANTS = ("bare", "wstrace")
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


def _setup(variant: str, kind: str, port: int) -> None:
    import django  # noqa: PLC0415
    from django.conf import settings  # noqa: PLC0415

    settings.configure(INSTALLED_APPS=["channels"], DATABASES={}, CHANNEL_LAYERS={"default": _layer_config(kind, port)})
    django.setup()
    if variant == "wstrace":
        from benchmarks.common import sdk  # noqa: PLC0415
        from wstrace.instrumentation.channels import ChannelsInstrumentor  # noqa: PLC0415

        tracer_provider, meter_provider, _ = sdk()
        ChannelsInstrumentor().instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)


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
    _say(event="done", last=last, handled=handled, cpu=cpu, consumers=len(tasks))
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


def run_once(variant: str, kind: str, port: int, sends: int, consumers: int) -> tuple[float, float]:
    """Handler calls per second for one run of ``variant``, and the consumer processes' CPU µs per call."""
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
    return 2 * expected / elapsed, sum(d["cpu"] for d in done) / (2 * expected) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--sends", type=int, default=200)
    parser.add_argument("--consumers", type=int, default=50, help="per process (two processes)")
    parser.add_argument("--layer", choices=("redis", "pubsub"), default="redis")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results: dict[str, list[float]] = {v: [] for v in VARIANTS}
    cpu: dict[str, list[float]] = {v: [] for v in VARIANTS}
    ratios: list[float] = []
    with _redis() as port:
        run_once("bare", args.layer, port, 20, args.consumers)  # warm-up: imports, page cache
        for rep in range(args.reps):
            order = VARIANTS if rep % 2 == 0 else tuple(reversed(VARIANTS))
            measured = {v: run_once(v, args.layer, port, args.sends, args.consumers) for v in order}
            rates = {v: m[0] for v, m in measured.items()}
            for v, (rate, per_call) in measured.items():
                results[v].append(rate)
                cpu[v].append(per_call)
            ratios.append(rates["wstrace"] / rates["bare"])
            print(
                f"rep {rep + 1}: bare {rates['bare']:,.0f}/s ({measured['bare'][1]:.0f} µs CPU/call), "
                f"wstrace {rates['wstrace']:,.0f}/s ({measured['wstrace'][1]:.0f} µs CPU/call), ratio {ratios[-1]:.3f}",
                flush=True,
            )
    summary = {
        "layer": args.layer,
        "sends": args.sends,
        "consumers": 2 * args.consumers,
        "bare_median_per_s": statistics.median(results["bare"]),
        "wstrace_median_per_s": statistics.median(results["wstrace"]),
        "ratio_median": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "bare_cpu_us_per_call": statistics.median(cpu["bare"]),
        "wstrace_cpu_us_per_call": statistics.median(cpu["wstrace"]),
        "runs": results,
        "cpu_us_per_call": cpu,
    }
    print(
        f"group_send to {2 * args.consumers} consumers in 2 processes ({args.layer}): "
        f"bare {summary['bare_median_per_s']:,.0f} handler calls/s, wstrace {summary['wstrace_median_per_s']:,.0f}/s, "
        f"ratio median {summary['ratio_median']:.3f} (range {summary['ratio_min']:.3f}..{summary['ratio_max']:.3f}); "
        f"consumer CPU per handler call: bare {summary['bare_cpu_us_per_call']:.0f} µs, "
        f"wstrace {summary['wstrace_cpu_us_per_call']:.0f} µs"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("consumer", "sender"):
        role, variant, kind, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
        _setup(variant, kind, port)
        if role == "consumer":
            asyncio.run(_consume(int(sys.argv[5]), int(sys.argv[6])))
        else:
            asyncio.run(_send(int(sys.argv[5])))
    else:
        main()
