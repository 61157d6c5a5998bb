#!/usr/bin/env python3
"""Coverage-guided fuzzing of the same properties with atheris (libFuzzer), when it is installed.

    tests/reliability/fuzz_atheris.py /tmp/work tests/corpus/fuzz -max_total_time=300

(executable, so that libFuzzer's ``-merge=1`` can re-run it; see ``tests/corpus/README.md``).

Inputs are those of ``harness.check``. libFuzzer adds what it finds to the first directory and seeds
from all of them; ``test_fuzz.py`` replays every file of ``tests/corpus/fuzz`` on each run. A crash is
written as ``crash-<sha1>``: copy it into the corpus once it is fixed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris


sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script: the repository root

with atheris.instrument_imports(include=["wstrace"]):
    from tests.reliability import harness


def main() -> None:
    atheris.Setup(sys.argv, harness.check)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
