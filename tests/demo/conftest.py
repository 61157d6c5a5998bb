"""Runs of the real ``wstrace demo`` command in a subprocess, shared by the end-to-end tests.

Each run is made once per session and its trace file read back with the CLI's reader; the tests assert on
that file, never on the printed output.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pytest

from tests.demo.fakes import fake_collector, url
from tests.redis_server import require_redis_server
from wstrace.cli.export import SpanRecord, read_spans


# The checks shared by the demo's test modules keep pytest's detailed assertion messages.
pytest.register_assert_rewrite("tests.demo.checks")

SPEED = "20"  # twenty times real time: a two-turn run takes about two seconds


@dataclass
class DemoRun:
    """One finished ``wstrace demo`` and the spans of its trace file."""

    args: tuple[str, ...]
    out: Path
    returncode: int
    stdout: str
    stderr: str
    spans: list[SpanRecord]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def by_id(self) -> dict[str, SpanRecord]:
        return {s.span_id: s for s in self.spans}

    def named(self, prefix: str, service: Optional[str] = None) -> list[SpanRecord]:
        return [
            s
            for s in self.spans
            if s.name.startswith(prefix) and (service is None or s.resource.get("service.name") == service)
        ]

    def parent(self, span: SpanRecord) -> Optional[SpanRecord]:
        return self.by_id.get(span.parent_span_id or "")

    def ancestors(self, span: SpanRecord) -> list[SpanRecord]:
        chain, current = [], self.parent(span)
        while current is not None and len(chain) < 100:
            chain.append(current)
            current = self.parent(current)
        return chain

    def turns(self) -> list[SpanRecord]:
        """The device's turn spans, by turn number."""
        return sorted(self.named("voice turn", "voice-device"), key=lambda s: s.attributes["wstrace.voice.turn.number"])

    def script(self) -> list[tuple[str, str, str]]:
        """(utterance, transcript, reply) per turn, as the device recorded them."""
        return [
            (
                t.attributes["wstrace.voice.turn.utterance"],
                t.attributes["wstrace.voice.turn.transcript"],
                t.attributes["wstrace.voice.turn.reply"],
            )
            for t in self.turns()
        ]


def run_demo(directory: Path, *args: str, env: Optional[Mapping[str, str]] = None, timeout: float = 90) -> DemoRun:
    """``python -m wstrace.demo --out DIR/trace.jsonl ARGS`` (the same code as ``wstrace demo``)."""
    out = directory / "trace.jsonl"
    environment = {**os.environ, "COLUMNS": "140", "PYTHONIOENCODING": "utf-8", **(env or {})}
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        if env is None or name not in env:
            environment.pop(name, None)  # a developer's collector must not change the tests
    completed = subprocess.run(
        [sys.executable, "-m", "wstrace.demo", "--out", str(out), *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=timeout,
        env=environment,
        check=False,
    )
    spans = read_spans(out) if out.exists() else []
    return DemoRun(tuple(args), out, completed.returncode, completed.stdout, completed.stderr, spans)


@pytest.fixture(scope="session")
def message_run(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """The default model and envelope, two turns, seed 7."""
    return run_demo(tmp_path_factory.mktemp("message"), "--turns", "2", "--speed", SPEED, "--seed", "7")


@pytest.fixture(scope="session")
def connection_run(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """The connection model with the envelope forced on both ends; the same seed as ``message_run``."""
    return run_demo(
        tmp_path_factory.mktemp("connection"),
        "--turns",
        "2",
        "--speed",
        SPEED,
        "--seed",
        "7",
        "--model",
        "connection",
        "--envelope",
        "always",
    )


@pytest.fixture(scope="session")
def plain_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoRun]:
    """No envelope, another seed, and ``OTEL_EXPORTER_OTLP_ENDPOINT`` pointing at a loopback collector."""
    with fake_collector() as collector:
        run = run_demo(
            tmp_path_factory.mktemp("plain"),
            "--turns",
            "2",
            "--speed",
            SPEED,
            "--seed",
            "8",
            "--envelope",
            "off",
            env={"OTEL_EXPORTER_OTLP_ENDPOINT": url(collector)},
        )
        run.extra["collector"] = list(collector.requests)
    yield run


@pytest.fixture(scope="session")
def socketio_run(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """``--stack socketio``, two turns, seed 7; needs redis-server on PATH (missing: a skip here, a failure in CI)."""
    require_redis_server([shutil.which("redis-server")], os.environ)
    return run_demo(
        tmp_path_factory.mktemp("socketio"), "--stack", "socketio", "--turns", "2", "--speed", SPEED, "--seed", "7"
    )
