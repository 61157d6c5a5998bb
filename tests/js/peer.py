"""The wstrace Python server the JavaScript clients talk to (``tests/peers/js_server.py``), in its own process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Callable, Optional, TypeVar

from tests.js.node import REPO


T = TypeVar("T")


class JsServer:
    """A running ``js_server.py``: its ports, and the spans and messages it printed so far."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.port = 0
        self.http: Optional[int] = None
        self.spans: list[dict[str, Any]] = []
        self.messages: list[dict[str, Any]] = []
        self.output: list[str] = []
        """Lines that were not events (warnings, tracebacks)."""
        self._ready = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                self.output.append(line)
                continue
            if event.get("event") == "listening":
                self.port, self.http = event["port"], event["http"]
                self._ready.set()
            elif event.get("event") == "span":
                self.spans.append(event)
            elif event.get("event") == "message":
                self.messages.append(event)
        self._ready.set()

    def until(self, check: Callable[[], Optional[T]], timeout: float = 10.0, what: str = "the server") -> T:
        deadline = time.monotonic() + timeout
        while True:
            found = check()
            if found:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; spans: {[s['name'] for s in self.spans]}")
            time.sleep(0.02)


@contextmanager
def js_server(args: Sequence[str]) -> Iterator[JsServer]:
    """Start ``js_server.py`` with ``args``; stop it (closing its stdin) at the end."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WSTRACE_", "OTEL_"))}  # its options: `args`
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO)])
    process = subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "peers" / "js_server.py"), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=REPO,
    )
    server = JsServer(process)
    try:
        if not server._ready.wait(30) or not server.port:
            process.kill()
            server.reader.join(10)
            raise AssertionError("js_server.py did not start:\n" + "".join(server.output))
        yield server
    finally:
        assert process.stdin is not None
        process.stdin.close()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        server.reader.join(10)
        if process.stdout is not None:
            process.stdout.close()
