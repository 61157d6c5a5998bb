"""A peer in a process of its own, and what it printed: events as ``PEER {json}`` lines, spans from a console
exporter. Shared by the tests that need a second process (bare peers, Channels and Socket.IO servers)."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from tests.console import console_spans


ROOT = Path(__file__).resolve().parent.parent


class OutputProcess:
    """A running process whose output a thread reads into :attr:`lines`."""

    def __init__(self, args: list[str], env: dict[str, str], *, stdin: bool = False) -> None:
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.PIPE if stdin else None,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=ROOT,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line[5:]) for line in list(self.lines) if line.startswith("PEER ")]

    def wait_for(self, event: str, timeout: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for item in self.events():
                if item["event"] == event:
                    return item
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise AssertionError(f"the process printed no {event!r} event:\n" + "\n".join(self.lines))

    def printed_spans(self) -> list[dict[str, Any]]:
        """Spans a console exporter printed so far (stop the process first, to flush them)."""
        return console_spans("\n".join(line for line in list(self.lines) if not line.startswith("PEER ")))

    def _closed(self) -> None:
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
