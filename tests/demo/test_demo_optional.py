"""The demo's optional modes: ``--real-audio`` (espeak-ng and pocketsphinx) and ``--llm-url`` (the ``demo-llm``
extra: the openai SDK, and the OpenTelemetry instrumentations of it and of its HTTP client, httpx).

The ``test`` extra installs the Python packages and ``.ci/run`` espeak-ng, so CI runs both; a test whose
requirement is missing skips saying what to install, or fails under CI (``tests/missing.py``).
"""

from __future__ import annotations

import importlib
import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.demo.checks import assert_asr_chain, assert_no_orphans, assert_ran, service, stage_spans, turn_of
from tests.demo.conftest import SPEED, run_demo
from tests.demo.fakes import REPLY_TOKENS, fake_llm, url
from tests.missing import skip_or_fail, under_ci
from wstrace.demo.run import latencies
from wstrace.demo.server import STAGE


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def _require(option: str, missing: list[str]) -> None:
    if missing:
        skip_or_fail(f"{option} needs {' and '.join(missing)} (not installed here)")


def test_real_audio_turn(tmp_path: Path) -> None:
    _require(
        "--real-audio",
        [
            name
            for name, ok in (
                ("espeak-ng (apt-get install espeak-ng)", shutil.which("espeak-ng")),
                ("pocketsphinx (pip install 'wstrace[demo-audio]')", _importable("pocketsphinx")),
            )
            if not ok
        ],
    )
    run = run_demo(tmp_path, "--real-audio", "--turns", "1", "--speed", "4", "--seed", "3")
    assert_ran(run)
    assert_no_orphans(run)
    assert_asr_chain(run)
    (asr,) = stage_spans(run, "speech_to_text")
    (tts,) = stage_spans(run, "text_to_speech")
    assert asr.name == "speech_to_text pocketsphinx-en-us" and tts.name == "text_to_speech espeak-ng-en-us"
    (turn,) = run.turns()
    assert turn.attributes["wstrace.voice.turn.reply_audio"] > 0.5
    assert turn.attributes["wstrace.voice.turn.latency"] > 0
    assert turn.attributes["wstrace.voice.turn.transcript"]  # pocketsphinx heard something (exactness varies)


def test_a_missing_requirement_fails_under_ci() -> None:
    """CI installs every optional requirement: there a missing one fails; elsewhere it skips, saying why."""
    with pytest.raises(pytest.fail.Exception, match="CI is set"):
        skip_or_fail("--real-audio needs espeak-ng", {"CI": "true"})
    for environ in ({}, {"CI": ""}, {"CI": "false"}, {"CI": "0"}):
        assert not under_ci(environ)
        with pytest.raises(pytest.skip.Exception, match="needs espeak-ng"):
            skip_or_fail("--real-audio needs espeak-ng", environ)


LLM_MODULES = {
    "openai": "the openai SDK",
    "opentelemetry.instrumentation.openai_v2": "opentelemetry-instrumentation-openai-v2",
    "opentelemetry.instrumentation.httpx": "opentelemetry-instrumentation-httpx",
}


def test_llm_stage_on_an_openai_compatible_endpoint(tmp_path: Path) -> None:
    """Streamed from a loopback OpenAI-compatible server: the reply, the history, and the stage's spans.

    The stage reads once: ``chat fake-model stream`` (the demo's stream: what the pipeline saw) holds the SDK's
    ``chat fake-model`` (the GenAI span), which holds the HTTP request, whose ``traceparent`` reached the server.
    """
    missing = [
        f"{name} (pip install 'wstrace[demo-llm]')" for module, name in LLM_MODULES.items() if not _importable(module)
    ]
    _require("--llm-url", missing)
    with fake_llm() as server:
        run = run_demo(
            tmp_path, "--turns", "2", "--speed", SPEED, "--llm-url", url(server) + "/v1", "--llm-model", "fake-model"
        )
        requests = [json.loads(body) for _, body in server.requests]
        headers = list(server.headers)
    assert_ran(run)
    assert_no_orphans(run)
    reply = "".join(REPLY_TOKENS)
    assert [r for _, _, r in run.script()] == [reply, reply]
    assert [r["model"] for r in requests] == ["fake-model", "fake-model"] and all(r["stream"] for r in requests)
    # The second request carries the first exchange: the conversation's history.
    assert [m["role"] for m in requests[1]["messages"]] == ["system", "user", "assistant", "user"]

    streams = sorted(stage_spans(run, "chat"), key=lambda s: turn_of(run, s))
    assert [s.name for s in streams] == ["chat fake-model stream"] * 2
    for turn, stream, sent in zip(run.turns(), streams, headers, strict=True):
        members = [s for s in run.spans if s.trace_id == turn.trace_id]
        # Exactly one chat span per turn: the SDK's, a GenAI client span under the demo's stream span.
        (chat,) = [s for s in members if s.name == "chat fake-model"]
        assert chat.scope.startswith("opentelemetry.instrumentation.openai") and chat.kind == "CLIENT"
        assert chat.attributes["gen_ai.operation.name"] == "chat"
        assert chat.attributes["gen_ai.request.model"] == "fake-model"
        assert run.parent(chat) == stream and stream.trace_id == turn.trace_id
        # The stream span measures the tokens and claims no GenAI operation of its own.
        assert stream.kind == "INTERNAL" and "gen_ai.operation.name" not in stream.attributes
        assert stream.attributes["wstrace.stream.chunk_count"] == len(REPLY_TOKENS)
        assert stream.attributes["wstrace.stream.time_to_first_chunk"] > 0
        parent = run.parent(stream)
        assert parent is not None and parent.name == "invoke_agent voice-assistant"
        # The HTTP request is a client span under the SDK's, and its traceparent is what the server got.
        (http,) = [s for s in members if s.scope == "opentelemetry.instrumentation.httpx"]
        assert http.kind == "CLIENT" and http.parent_span_id == chat.span_id and service(http) == "voice-server"
        assert http.attributes.get("http.request.method", http.attributes.get("http.method")) == "POST"
        version, trace_id, span_id, flags = sent.get("traceparent", "---").split("-")
        assert (version, trace_id, span_id) == ("00", turn.trace_id, http.span_id), sent
        assert int(flags, 16) & 1  # sampled
    # The latency table reads the stage's time to first token from the stream span, not the SDK's.
    assert [row.llm_ttft for row in latencies(run.spans)] == [
        s.attributes["wstrace.stream.time_to_first_chunk"] for s in streams
    ]
    assert not [s for s in run.spans if s.attributes.get(STAGE) and s.scope != "wstrace"]


def test_a_dead_llm_endpoint_fails_the_turn_on_every_span_of_the_stage(tmp_path: Path) -> None:
    missing = [
        f"{name} (pip install 'wstrace[demo-llm]')" for module, name in LLM_MODULES.items() if not _importable(module)
    ]
    _require("--llm-url", missing)
    with socket.socket() as sock:  # bound, never listening: the connection is refused at once
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
        run = run_demo(tmp_path, "--turns", "1", "--speed", SPEED, "--llm-url", dead, "--llm-model", "dead-model")
    assert "Traceback" not in run.stderr, run.stderr
    assert "✗ APIConnectionError" in run.stdout
    (stream,) = stage_spans(run, "chat")
    (chat,) = [s for s in run.spans if s.name == "chat dead-model"]
    (http,) = [s for s in run.spans if s.scope == "opentelemetry.instrumentation.httpx"]
    assert run.parent(chat) == stream and http.parent_span_id == chat.span_id
    assert [s.name for s in run.ancestors(stream)][:1] == ["invoke_agent voice-assistant"]
    for span in (stream, chat, http, run.ancestors(stream)[0]):
        assert span.status == "ERROR", span.name
    assert stream.attributes["error.type"] == chat.attributes["error.type"] == "APIConnectionError"


def test_wstrace_demo_command(tmp_path: Path) -> None:
    """``wstrace demo`` itself, once ``wstrace.cli`` routes to :func:`wstrace.cli.demo.run_from_args`."""
    usage = subprocess.run(
        [sys.executable, "-m", "wstrace.cli", "demo", "--help"], capture_output=True, text=True, check=False
    )
    if "--turns" not in usage.stdout:
        pytest.skip("wstrace.cli does not route `demo` to wstrace.cli.demo.run_from_args yet")
    out = tmp_path / "trace.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "wstrace.cli", "demo", "--turns", "1", "--speed", SPEED, "--out", str(out)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert out.exists() and out.stat().st_size > 0
