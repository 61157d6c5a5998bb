"""``wstrace bench``: run the benchmark suite of a source checkout.

The suite lives in ``benchmarks/`` at the root of the repository, next to ``src/``; it is not part of the
installed package (it needs the SDK, every supported library, and optionally ddtrace and py-spy). This
command finds that directory (from the current directory upwards, then next to the imported ``wstrace``),
and runs ``python -m benchmarks.run`` (or ``benchmarks.micro``, ``.profile``, ``.timers``) there with the
arguments given. Without a checkout it says where to get one and exits with status 2.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional


__all__ = ["add_arguments", "find_checkout", "run_from_args"]

_TOOLS = {
    "suite": "benchmarks.run",
    "micro": "benchmarks.micro",
    "profile": "benchmarks.profile",
    "timers": "benchmarks.timers",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``bench`` subcommand's arguments; anything after them goes to the benchmark tool unchanged."""
    parser.add_argument(
        "--tool",
        choices=tuple(_TOOLS),
        default="suite",
        help="suite: bare and instrumented servers interleaved (default); micro: in-process per-message costs;"
        " profile: one server variant under py-spy; timers: exact time per call of wstrace's entry points in a"
        " server",
    )
    parser.add_argument(
        "--checkout", metavar="DIR", help="the wstrace source checkout (default: found from here or from wstrace)"
    )
    parser.add_argument(
        "bench_args",
        nargs=argparse.REMAINDER,
        metavar="...",
        help="options of the tool, e.g. --reps 3 --only echo64 (see: wstrace bench -- --help)",
    )


def find_checkout(start: Optional[Path] = None) -> Optional[Path]:
    """The directory holding ``benchmarks/run.py`` and ``src/wstrace``, or ``None``."""
    here = (start or Path.cwd()).resolve()
    candidates = [here, *here.parents]
    package = Path(__file__).resolve().parents[1]  # src/wstrace in a checkout
    candidates += [package.parent.parent] if package.parent.name == "src" else []
    for root in candidates:
        if (root / "benchmarks" / "run.py").is_file() and (root / "src" / "wstrace").is_dir():
            return root
    return None


def run_from_args(args: argparse.Namespace) -> int:
    """Run the chosen benchmark tool in the checkout; returns its exit status."""
    root = Path(args.checkout).resolve() if args.checkout else find_checkout()
    if root is None or not (root / "benchmarks" / "run.py").is_file():
        print("wstrace bench runs the benchmark suite of a source checkout, which this is not:", file=sys.stderr)
        print("    git clone <the wstrace repository> && cd wstrace && make bench", file=sys.stderr)
        print("or pass --checkout DIR.", file=sys.stderr)
        return 2
    extra = list(args.bench_args or [])
    if extra[:1] == ["--"]:
        extra = extra[1:]
    env = dict(os.environ)
    # The checkout's own sources first, so that the suite measures them even if another wstrace is installed.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root / "src"), str(root), env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", _TOOLS[args.tool], *extra]
    try:
        return subprocess.call(command, cwd=root, env=env)
    except KeyboardInterrupt:
        return 130
