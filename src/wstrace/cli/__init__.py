"""The ``wstrace`` command line: ``wstrace demo``.

The CLI needs the ``cli`` extra (the OpenTelemetry SDK and websockets);
without it, it says how to install it instead of failing with a traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence


__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wstrace", description="Trace WebSocket traffic with OpenTelemetry.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="run an instrumented websockets client and server on loopback and print the trace"
    )
    demo.add_argument("--model", choices=("message", "connection"), default=None, help="tracing model")
    demo.add_argument("--envelope", choices=("off", "negotiate", "always"), default=None, help="envelope mode")
    demo.add_argument("--messages", type=int, default=3, help="messages the client sends (default 3)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        from wstrace.cli import demo  # noqa: PLC0415 - needs the [cli] extra
    except ImportError as exc:
        print(f"wstrace: the command line needs the cli extra ({exc.name} is missing):", file=sys.stderr)
        print("    pip install 'wstrace[cli]'", file=sys.stderr)
        return 1
    return demo.run(model=args.model, envelope=args.envelope, messages=args.messages)
