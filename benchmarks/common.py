"""Shared pieces: the SDK set-up every instrumented variant uses, memory probes, and small helpers."""

from __future__ import annotations

import argparse
import gc
import os
import resource
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, PeriodicExportingMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased


ROOT = Path(__file__).resolve().parent.parent
DEPS = Path(__file__).resolve().parent / ".deps"
"""Where ``make bench-deps`` installs ddtrace, outside the project's venv (ddtrace registers a pytest plugin)."""

ROUTE = "/bench"
CHUNK = "y" * 64
"""What the server sends for each message of a stream."""
STREAM_PREFIX = "stream:"
"""``stream:N`` asks the server for N chunks, sent by the handler while it handles the request (a reply stream)."""
PUSH_PREFIX = "push:"
"""``push:N`` asks the server for N chunks pushed by a task with no context (a worker's or a timer's)."""
UPLOAD_PREFIX = "upload:"
"""``upload:N`` announces N messages from the client; the server reads them and answers ``ack``."""
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
"""The context a traced peer sends (sampled)."""
UNSAMPLED_TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
ENVELOPE_OFFER = ("wstrace-envelope", "frame/1")
"""The handshake header a traced peer sends (offer) and answers (agreement)."""


def wrap(payload: str) -> str:
    """A text envelope carrying ``TRACEPARENT``, as a traced peer sends it (the wire format of docs/protocol.md)."""
    return f"\x1ewt1traceparent={TRACEPARENT}\x1e{payload}"


def unwrap(wire: str | bytes) -> str | bytes:
    """The payload of a text envelope (a traced peer strips what it receives); anything else as it is."""
    if isinstance(wire, str) and wire.startswith("\x1ewt1"):
        return wire[wire.index("\x1e", 4) + 1 :]
    return wire


class DiscardSpans(SpanExporter):
    """Counts spans and drops them: the cost measured is making spans, not shipping them."""

    def __init__(self) -> None:
        self.count = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.count += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


class DiscardMetrics(MetricExporter):
    def __init__(self) -> None:
        super().__init__()

    def export(self, metrics_data: Any, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        pass


def sdk(sampled: bool = True) -> tuple[TracerProvider, MeterProvider, DiscardSpans]:
    """A real SDK: BatchSpanProcessor (default settings) with a discarding exporter, and a periodic metric reader.

    ``sampled=False`` samples every root out (``ParentBased(ALWAYS_OFF)``): a handshake with no sampled
    parent is not recorded, and neither is anything on its connection.
    """
    spans = DiscardSpans()
    tracer_provider = TracerProvider(sampler=ParentBased(ALWAYS_ON if sampled else ALWAYS_OFF))
    tracer_provider.add_span_processor(BatchSpanProcessor(spans))
    reader = PeriodicExportingMetricReader(DiscardMetrics(), export_interval_millis=5_000)
    return tracer_provider, MeterProvider(metric_readers=[reader]), spans


COMPILED = ROOT / "build" / "compiled"
"""Where ``scripts/compile-core`` unpacks the compiled core (the mypyc wheel)."""


def add_compiled_argument(parser: argparse.ArgumentParser) -> None:
    """``--compiled [DIR]``: the option every runner that can measure the compiled core takes (:func:`use_compiled`)."""
    parser.add_argument(
        "--compiled",
        nargs="?",
        const=COMPILED,
        type=Path,
        help=f"run on the compiled core in this directory (default {COMPILED.relative_to(ROOT)}, scripts/compile-core)",
    )


def use_compiled(path: Path = COMPILED) -> str:
    """Run every process started from here on on the compiled core in ``path``: it goes first on PYTHONPATH,
    which the servers and clients inherit. Fails unless a child really imports the compiled modules."""
    python_path = os.pathsep.join(p for p in (str(path), str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    probe = subprocess.run(
        [sys.executable, "-c", "import wstrace.connection as c; print(c.__file__)"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": python_path},
        timeout=60,
        check=False,
    )
    if not probe.stdout.strip().endswith(".so"):
        raise SystemExit(
            f"no compiled core in {path} ({probe.stdout.strip() or probe.stderr[-500:]}): run scripts/compile-core"
        )
    os.environ["PYTHONPATH"] = python_path
    return python_path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def raise_fd_limit(wanted: int = 8192) -> None:
    """Allow a few thousand sockets (1,000 connections need 1,000 descriptors on each side)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def rss_bytes() -> int:
    """Resident set size of this process, from /proc (0 where there is none)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def memory_probe() -> dict[str, int]:
    """What this process holds, after a full collection: RSS, pymalloc blocks, and GC-tracked objects."""
    gc.collect()
    return {
        "rss": rss_bytes(),
        "blocks": sys.getallocatedblocks(),
        "objects": len(gc.get_objects()),
    }


def use_bench_deps() -> None:
    """Make packages installed by ``make bench-deps`` importable (ddtrace), if that was run."""
    if DEPS.is_dir() and str(DEPS) not in sys.path:
        sys.path.append(str(DEPS))


def ddtrace_available() -> bool:
    use_bench_deps()
    import importlib.util  # noqa: PLC0415

    return importlib.util.find_spec("ddtrace") is not None
