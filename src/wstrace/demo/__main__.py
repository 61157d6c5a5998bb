"""``python -m wstrace.demo``: the same as ``wstrace demo``."""

from __future__ import annotations

import argparse

from wstrace.cli.demo import add_arguments, run_from_args


parser = argparse.ArgumentParser(
    prog="python -m wstrace.demo", description="An AI voice assistant over WebSockets, traced end to end."
)
add_arguments(parser)
raise SystemExit(run_from_args(parser.parse_args()))
