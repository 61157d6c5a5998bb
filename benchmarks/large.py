"""Large messages: what the envelope costs a 1 MiB or 16 MiB message, in time and in peak memory.

    python -m benchmarks.large [--reps 5] [--sizes 1,16] [--senders websockets,websocket-client] [--json OUT]

A websockets asyncio receiver (server, CPU 0) and a sender (client, CPU 1) run in fresh processes for every
run, on 127.0.0.1, compression off. The sender sends one binary message of the given size, of random bytes,
and waits for the receiver's 2-byte acknowledgement, ``--count`` times (after one warm-up message): the
round trip is the median of those, and each process's CPU time (``time.process_time``: every thread, the
span processor's included, and the kernel's work for it) is averaged over them. Then, with ``tracemalloc``
on in both processes, it
sends ``--memory-count`` more: for each, the peak of traced memory above what was allocated before it (the
payload itself is allocated before), in the sender from its ``send`` to the acknowledgement, in the receiver
from the end of the previous message to the end of its ``recv``. The largest of those peaks is the run's.

Variants: ``bare`` (no instrumentation anywhere); ``wstrace`` (both ends instrumented, envelope negotiated,
default options, the real SDK with a discarding exporter): a message of ``wstrace._wire.SPLIT_AT`` or more
goes as two fragments, its envelope prefix then the payload; ``wstrace-joined``: the same with the
split turned off in the sender, which then copies the payload behind its prefix (wstrace before 1.1, and
every adapter whose library cannot send fragments). With ``--senders websocket-client`` the sender is a
websocket-client ``WebSocket`` instead (it joins the prefix: see ``docs/performance.md``).

Variants run interleaved (A B C, then C B A); a variant's ratios are paired by rep with ``bare`` of the same
size and sender, and the table gives medians over reps (with the ratios' median and range).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import tracemalloc
from typing import Any, Optional


MiB = 1 << 20
VARIANTS = ("bare", "wstrace", "wstrace-joined")
ACK = b"ok"


def _pin(cpu: int) -> None:
    if (os.cpu_count() or 1) >= 2 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})


def _instrument(variant: str, *, sender: str = "websockets") -> Any:
    """Instrument this process for ``variant``; returns the tracer provider to flush, or ``None``."""
    if variant == "bare":
        return None
    from benchmarks.common import sdk  # noqa: PLC0415
    from wstrace.instrumentation.websocket_client import WebsocketClientInstrumentor  # noqa: PLC0415
    from wstrace.instrumentation.websockets import WebsocketsInstrumentor  # noqa: PLC0415

    tracer_provider, meter_provider, _ = sdk()
    options = {"tracer_provider": tracer_provider, "meter_provider": meter_provider, "envelope": "negotiate"}
    WebsocketsInstrumentor().instrument(**options)
    if sender == "websocket-client":
        WebsocketClientInstrumentor().instrument(**options)
    if variant == "wstrace-joined":
        import wstrace._wire  # noqa: PLC0415
        import wstrace.instrumentation.websockets._connection as adapter  # noqa: PLC0415

        wstrace._wire.SPLIT_AT = adapter.SPLIT_AT = 1 << 62  # type: ignore[misc]
    return tracer_provider


def _peak_since(base: int) -> int:
    return tracemalloc.get_traced_memory()[1] - base


def _reset() -> int:
    tracemalloc.reset_peak()
    return tracemalloc.get_traced_memory()[0]


# Receiver ------------------------------------------------------------------------------------------------


async def _receive(variant: str) -> None:
    from websockets.asyncio.server import ServerConnection, serve  # noqa: PLC0415
    from websockets.exceptions import ConnectionClosed  # noqa: PLC0415

    async def handler(ws: ServerConnection) -> None:
        try:
            await measure(ws)
        except ConnectionClosed:
            pass

    async def measure(ws: ServerConnection) -> None:
        peaks: list[int] = []
        base = 0
        received = 0
        cpu = 0.0
        while True:
            message = await ws.recv()
            if isinstance(message, str):
                if message == "memory on":
                    tracemalloc.start()
                    await ws.send(json.dumps({"cpu": (time.process_time() - cpu) / max(1, received - 1)}))
                    base = _reset()
                    continue
                if message == "memory off":
                    await ws.send(json.dumps({"peak": max(peaks, default=0)}))
                    tracemalloc.stop()
                    continue
                await ws.send(ACK)
                base = _reset() if tracemalloc.is_tracing() else 0
                continue
            if tracemalloc.is_tracing():
                peaks.append(_peak_since(base))
            del message
            await ws.send(ACK)
            if tracemalloc.is_tracing():
                base = _reset()
            else:
                received += 1
                if received == 1:  # CPU time from the end of the warm-up message to "memory on"
                    cpu = time.process_time()

    _instrument(variant)
    async with serve(handler, "127.0.0.1", 0, compression=None, max_size=None) as server:
        print(json.dumps({"port": server.sockets[0].getsockname()[1]}), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent closes stdin


# Senders -------------------------------------------------------------------------------------------------


async def _send_websockets(variant: str, port: int, payload: bytes, count: int, memory_count: int) -> dict[str, Any]:
    _instrument(variant)
    from websockets.asyncio.client import connect  # noqa: PLC0415

    async with connect(f"ws://127.0.0.1:{port}/large", compression=None, max_size=None) as ws:
        times = []
        for n in range(count + 1):
            if n == 1:
                cpu = time.process_time()
            start = time.perf_counter()
            await ws.send(payload)
            await ws.recv()
            times.append(time.perf_counter() - start)
        cpu = (time.process_time() - cpu) / count
        await ws.send("memory on")
        receiver_cpu = json.loads(await ws.recv())["cpu"]
        tracemalloc.start()
        peaks = []
        for _ in range(memory_count):
            base = _reset()
            await ws.send(payload)
            await ws.recv()
            peaks.append(_peak_since(base))
        tracemalloc.stop()
        await ws.send("memory off")
        receiver = json.loads(await ws.recv())
    return {
        "ms": statistics.median(times[1:]) * 1e3,
        "sender_cpu_ms": cpu * 1e3,
        "receiver_cpu_ms": receiver_cpu * 1e3,
        "sender_peak": max(peaks),
        "receiver_peak": receiver["peak"],
    }


def _send_websocket_client(variant: str, port: int, payload: bytes, count: int, memory_count: int) -> dict[str, Any]:
    _instrument(variant, sender="websocket-client")
    import websocket  # noqa: PLC0415

    ws = websocket.create_connection(f"ws://127.0.0.1:{port}/large", timeout=60)
    times = []
    for n in range(count + 1):
        if n == 1:
            cpu = time.process_time()
        start = time.perf_counter()
        ws.send_bytes(payload)
        ws.recv()
        times.append(time.perf_counter() - start)
    cpu = (time.process_time() - cpu) / count
    ws.send("memory on")
    receiver_cpu = json.loads(ws.recv())["cpu"]
    tracemalloc.start()
    peaks = []
    for _ in range(memory_count):
        base = _reset()
        ws.send_bytes(payload)
        ws.recv()
        peaks.append(_peak_since(base))
    tracemalloc.stop()
    ws.send("memory off")
    receiver = json.loads(ws.recv())
    ws.close()
    return {
        "ms": statistics.median(times[1:]) * 1e3,
        "sender_cpu_ms": cpu * 1e3,
        "receiver_cpu_ms": receiver_cpu * 1e3,
        "sender_peak": max(peaks),
        "receiver_peak": receiver["peak"],
    }


# Orchestration -------------------------------------------------------------------------------------------


def _run(sender: str, variant: str, size_mib: float, count: int, memory_count: int) -> dict[str, Any]:
    me = [sys.executable, "-m", "benchmarks.large"]
    with subprocess.Popen(
        [*me, "_receiver", variant], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as receiver:
        assert receiver.stdout is not None and receiver.stdin is not None
        port = json.loads(receiver.stdout.readline())["port"]
        try:
            args = [*me, "_sender", sender, variant, str(port), str(size_mib), str(count), str(memory_count)]
            done = subprocess.run(args, capture_output=True, text=True, timeout=600, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"sender failed:\n{done.stderr[-3000:]}")
            return dict(json.loads(done.stdout.strip().splitlines()[-1]))
        finally:
            receiver.stdin.close()
            receiver.wait(30)


def _ratio(row: dict[str, Any], key: str) -> str:
    if row["variant"] == "bare":
        return ""
    low, mid, high = row[key]
    return f" ({mid:.2f}\u00d7, {low:.2f}\u2013{high:.2f})"


def _table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| sender | size | variant | round trip, ms | sender CPU, ms | receiver CPU, ms "
        "| sender peak | receiver peak |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        size = int(row["size_mib"] * MiB)
        lines.append(
            f"| {row['sender']} | {row['size_mib']} MiB | {row['variant']} "
            f"| {row['ms']:.2f}{_ratio(row, 'ms_ratio')} "
            f"| {row['sender_cpu_ms']:.2f}{_ratio(row, 'sender_cpu_ratio')} "
            f"| {row['receiver_cpu_ms']:.2f}{_ratio(row, 'receiver_cpu_ratio')} "
            f"| {row['sender_peak'] / MiB:.1f} MiB ({row['sender_peak'] / size:.2f}\u00d7) "
            f"| {row['receiver_peak'] / MiB:.1f} MiB ({row['receiver_peak'] / size:.2f}\u00d7) |"
        )
    return "\n".join(lines)


def _summarise(runs: dict[tuple[str, float, str], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Medians over reps; each ratio paired by rep with ``bare`` (min, median, max)."""
    rows = []
    for (sender, size_mib, variant), reps in runs.items():
        bare = runs[(sender, size_mib, "bare")]
        row: dict[str, Any] = {"sender": sender, "size_mib": size_mib, "variant": variant, "reps": len(reps)}
        for key in ("ms", "sender_cpu_ms", "receiver_cpu_ms", "sender_peak", "receiver_peak"):
            row[key] = statistics.median(r[key] for r in reps)
        for key, name in (
            ("ms", "ms_ratio"),
            ("sender_cpu_ms", "sender_cpu_ratio"),
            ("receiver_cpu_ms", "receiver_cpu_ratio"),
        ):
            ratios = [r[key] / b[key] for r, b in zip(reps, bare, strict=True)]
            row[name] = (min(ratios), statistics.median(ratios), max(ratios))
        rows.append(row)
    return rows


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_receiver":
        _pin(0)
        asyncio.run(_receive(argv[1]))
        return 0
    if argv and argv[0] == "_sender":
        _pin(1)
        sender, variant, port, size_mib, count, memory_count = argv[1:7]
        payload = os.urandom(int(float(size_mib) * MiB))
        send_args = (variant, int(port), payload, int(count), int(memory_count))
        if sender == "websockets":
            result = asyncio.run(_send_websockets(*send_args))
        else:
            result = _send_websocket_client(*send_args)
        print(json.dumps(result), flush=True)
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--sizes", default="1,16", help="message sizes in MiB, comma-separated (0.0625: 64 KiB)")
    parser.add_argument("--senders", default="websockets", help="websockets and/or websocket-client")
    parser.add_argument("--count", type=int, default=0, help="timed messages per run (default: 64 MiB worth, 8-50)")
    parser.add_argument("--memory-count", type=int, default=3)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, from: " + ", ".join(VARIANTS))
    parser.add_argument("--json", help="write every run and the table's rows to this file")
    options = parser.parse_args(argv)
    sizes = [float(s) if "." in s else int(s) for s in options.sizes.split(",")]
    senders = options.senders.split(",")
    variants = [v.strip() for v in options.variants.split(",") if v.strip()]
    if "bare" not in variants:
        variants.insert(0, "bare")
    runs: dict[tuple[str, float, str], list[dict[str, Any]]] = {}
    started = time.monotonic()
    for rep in range(options.reps):
        order = variants if rep % 2 == 0 else list(reversed(variants))
        for sender in senders:
            for size_mib in sizes:
                count = options.count or max(8, min(50, int(64 // size_mib)))
                for variant in order:
                    if sender == "websocket-client" and variant == "wstrace-joined":
                        continue  # websocket-client always joins the prefix
                    result = _run(sender, variant, size_mib, count, options.memory_count)
                    runs.setdefault((sender, size_mib, variant), []).append(result)
                    print(
                        f"rep {rep + 1}/{options.reps} {sender} {size_mib} MiB {variant:<16} {result['ms']:8.2f} ms"
                        f"  CPU {result['sender_cpu_ms']:7.2f} + {result['receiver_cpu_ms']:7.2f} ms"
                        f"  sender peak {result['sender_peak'] / MiB:6.1f} MiB"
                        f"  receiver peak {result['receiver_peak'] / MiB:6.1f} MiB",
                        file=sys.stderr,
                        flush=True,
                    )
    rows = _summarise(runs)
    rows.sort(key=lambda r: (senders.index(r["sender"]), r["size_mib"], variants.index(r["variant"])))
    print(_table(rows))
    print(f"\n{options.reps} reps, {time.monotonic() - started:.0f} s", file=sys.stderr)
    if options.json:
        report = {"rows": rows, "runs": [{"key": list(k), "runs": v} for k, v in runs.items()]}
        with open(options.json, "w") as out:
            json.dump(report, out, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
