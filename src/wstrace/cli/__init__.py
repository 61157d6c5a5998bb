"""The ``wstrace`` command line: ``wstrace demo``, ``wstrace view`` and ``wstrace bench``.

The CLI needs the ``cli`` extra (the OpenTelemetry SDK and websockets);
without it, it says how to install it instead of failing with a traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from wstrace.cli import bench, demo  # standard library only; the work is imported when it runs


__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wstrace", description="Trace WebSocket traffic with OpenTelemetry.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo_parser = commands.add_parser(
        "demo", help="run a traced AI voice assistant (device, ASR, LLM, TTS) on loopback and show its waterfall"
    )
    demo.add_arguments(demo_parser)
    bench_parser = commands.add_parser("bench", help="run the benchmark suite of a source checkout")
    bench.add_arguments(bench_parser)
    view = commands.add_parser("view", help="show the traces in an OTLP/JSON lines file (wstrace or Collector)")
    view.add_argument("file", help="the file, one OTLP/JSON ExportTraceServiceRequest per line")
    view.add_argument("--trace", metavar="ID", help="only the trace whose id starts with ID")
    view.add_argument("--session", metavar="ID", help="only traces with a span whose websocket.session.id is ID")
    view.add_argument("--width", metavar="N", type=int, help="terminal width in columns (default: detected)")
    view.add_argument("--html", metavar="OUT", help="write a self-contained HTML page to OUT instead")
    view.add_argument(
        "--no-fold",
        action="store_true",
        help="show every span (default: a run of 5 or more identical sibling subtrees shows as first, summary, last)",
    )
    return parser


def _needs_extra(exc: ImportError) -> int:
    print(f"wstrace: the command line needs the cli extra ({exc.name} is missing):", file=sys.stderr)
    print("    pip install 'wstrace[cli]'", file=sys.stderr)
    return 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit status (130 after Ctrl-C, with no traceback)."""
    try:
        return _run(argv)
    except KeyboardInterrupt:
        return 130


def _run(argv: Optional[Sequence[str]]) -> int:
    args = _parser().parse_args(argv)
    if args.command == "view":
        try:
            from wstrace.cli import view  # noqa: PLC0415 - needs the [cli] extra
        except ImportError as exc:
            return _needs_extra(exc)
        return view.main(args)
    if args.command == "bench":
        return bench.run_from_args(args)
    return demo.run_from_args(args)
