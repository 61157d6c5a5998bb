"""``wstrace demo``: an AI voice assistant over WebSockets, traced end to end (see ``docs/demo.md``).

This module is the command-line glue: :func:`add_arguments` and :func:`run_from_args`. The application is
the :mod:`wstrace.demo` package, imported only when the command runs, so that ``wstrace --help`` works
without the ``cli`` extra.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


__all__ = ["add_arguments", "run_from_args"]


def _positive_int(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 100:
        raise argparse.ArgumentTypeError("expected a whole number from 1 to 100")
    return value


def _speed(text: str) -> float:
    value = float(text)
    if not 0.05 <= value <= 1000:
        raise argparse.ArgumentTypeError("expected a factor from 0.05 to 1000")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``wstrace demo``'s options to ``parser``."""
    parser.add_argument("--turns", type=_positive_int, default=3, metavar="N", help="conversation turns (default 3)")
    parser.add_argument(
        "--model", choices=("message", "connection"), default="message", help="tracing model (default message)"
    )
    parser.add_argument(
        "--envelope",
        choices=("off", "negotiate", "always"),
        default="negotiate",
        help="per-message trace context (default negotiate)",
    )
    parser.add_argument(
        "--seed", type=int, default=1, metavar="N", help="seed of the script and the simulated latencies (default 1)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("wstrace-traces.jsonl"),
        metavar="PATH",
        help="OTLP/JSON lines trace file, replaced on each run (default ./wstrace-traces.jsonl)",
    )
    parser.add_argument(
        "--speed",
        type=_speed,
        default=1.0,
        metavar="X",
        help="pacing factor: 1 is real time, 10 runs ten times faster (default 1)",
    )
    parser.add_argument(
        "--profile",
        choices=("tuned", "typical"),
        default="tuned",
        help="latency profile of the simulated engines (default tuned: about 0.5 s voice-to-voice)",
    )
    parser.add_argument(
        "--real-audio",
        action="store_true",
        help="speak with espeak-ng and recognise with pocketsphinx (needs both installed)",
    )
    parser.add_argument(
        "--llm-url",
        metavar="URL",
        help="an OpenAI-compatible endpoint for the LLM stage, e.g. http://localhost:11434/v1 (needs openai)",
    )
    parser.add_argument(
        "--llm-model", default="gpt-4o-mini", metavar="NAME", help="model name for --llm-url (default gpt-4o-mini)"
    )
    parser.add_argument(
        "--stack",
        choices=("websockets", "socketio"),
        default="websockets",
        help="websockets (default), or socketio: the device over Socket.IO, the server a gateway and an assistant "
        "process behind a private redis-server (needs redis-server and pip install 'wstrace[demo-socketio]')",
    )
    parser.add_argument("--html", type=Path, metavar="PATH", help="also write the trace as an HTML page")
    parser.add_argument("--no-waterfall", action="store_true", help="print the latency table only")


def run_from_args(args: argparse.Namespace) -> int:
    """Run ``wstrace demo`` with parsed arguments; returns the exit status."""
    try:
        from wstrace.demo.run import Options, run  # noqa: PLC0415 - needs the [cli] extra
    except ImportError as exc:
        print(f"wstrace demo: needs the cli extra ({exc.name} is missing): pip install 'wstrace[cli]'", file=sys.stderr)
        return 1
    options = Options(
        turns=args.turns,
        model=args.model,
        envelope=args.envelope,
        seed=args.seed,
        out=args.out,
        speed=args.speed,
        profile=args.profile,
        real_audio=args.real_audio,
        llm_url=args.llm_url,
        llm_model=args.llm_model,
        html=args.html,
        waterfall=not args.no_waterfall,
        stack=args.stack,
    )
    return run(options)
