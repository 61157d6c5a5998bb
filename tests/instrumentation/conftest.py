"""Un-instrumented (or separately instrumented) peers in their own processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.peers.bare import describe, restore
from tests.processes import OutputProcess
from tests.routes import ROUTES_ENV


PEER = Path(__file__).resolve().parent.parent / "peers" / "bare.py"
ROOT = PEER.parents[2]
BIN = Path(sys.executable).parent


class PeerProcess(OutputProcess):
    """A running ``peers/bare.py`` and everything it printed."""

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.wait_for('listening')['port']}/chat"

    def opened(self) -> dict[str, Any]:
        return self.wait_for("open")

    def received(self, expected: int = 0, timeout: float = 20.0) -> list[str | bytes]:
        """The messages the peer printed, waiting until it printed ``expected`` of them: the reply the test
        read may come before this process reads the peer's line for the message."""
        deadline = time.monotonic() + timeout
        while True:
            found = [restore(e) for e in self.events() if e["event"] == "message"]
            if len(found) >= expected or time.monotonic() > deadline or self.proc.poll() is not None:
                return found
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # a clean exit flushes the exporter
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._closed()

    def exported_spans(self) -> list[dict[str, Any]]:
        """Spans the console exporter printed (needs the process stopped, to flush)."""
        self.stop()
        return self.printed_spans()


def peer_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WSTRACE_", "OTEL_"))}
    env["PYTHONPATH"] = os.pathsep.join((str(ROOT / "src"), str(ROOT)))  # this checkout's wstrace, not the installed
    env.update(extra or {})
    return env


@pytest.fixture
def bare_server() -> Iterator[Callable[..., PeerProcess]]:
    started: list[PeerProcess] = []

    def start(instrumented: dict[str, str] | None = None) -> PeerProcess:
        args = [sys.executable, str(PEER), "server"]
        env = peer_env()
        if instrumented is not None:
            args = [str(BIN / "opentelemetry-instrument"), *args]
            env.update(
                OTEL_TRACES_EXPORTER="console",
                OTEL_METRICS_EXPORTER="none",
                OTEL_LOGS_EXPORTER="none",
                OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="asyncio,threading",
                WSTRACE_ROUTES=ROUTES_ENV,
                **instrumented,
            )
        peer = PeerProcess(args, env)
        started.append(peer)
        return peer

    yield start
    for peer in started:
        peer.stop()


@pytest.fixture
def bare_client() -> Callable[[str, list[str | bytes]], list[str | bytes]]:
    def run(url: str, payloads: list[str | bytes]) -> list[str | bytes]:
        items = json.dumps([describe(p) for p in payloads])
        out = subprocess.run(
            [sys.executable, str(PEER), "client", url, items],
            capture_output=True,
            text=True,
            env=peer_env(),
            cwd=ROOT,
            timeout=60,
            check=True,
        )
        replies = [json.loads(line[5:]) for line in out.stdout.splitlines() if line.startswith("PEER ")]
        return [restore(r) for r in replies]

    return run
