"""The demo's optional modes, each skipped with a reason when what it needs is not installed.

CI installs none of them: ``--real-audio`` needs espeak-ng (Debian) and pocketsphinx (PyPI), ``--llm-url``
the openai SDK; opentelemetry-instrumentation-openai-v2 adds the SDK's own spans when present.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.demo.checks import assert_asr_chain, assert_no_orphans, assert_ran, stage_spans
from tests.demo.conftest import SPEED, DemoRun, run_demo
from tests.demo.fakes import REPLY_TOKENS, fake_llm, url


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def test_real_audio_turn(tmp_path: Path) -> None:
    missing = [
        name
        for name, ok in (("espeak-ng", shutil.which("espeak-ng")), ("pocketsphinx", _importable("pocketsphinx")))
        if not ok
    ]
    if missing:
        pytest.skip(f"--real-audio needs {' and '.join(missing)} (optional; not installed here)")
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


def test_llm_stage_on_an_openai_compatible_endpoint(tmp_path: Path) -> None:
    if importlib.util.find_spec("openai") is None:
        pytest.skip("--llm-url needs the openai SDK (optional; not installed here)")
    with fake_llm() as server:
        run = run_demo(
            tmp_path, "--turns", "2", "--speed", SPEED, "--llm-url", url(server) + "/v1", "--llm-model", "fake-model"
        )
        requests = [json.loads(body) for _, body in server.requests]
    assert_ran(run)
    assert_no_orphans(run)
    reply = "".join(REPLY_TOKENS)
    assert [r for _, _, r in run.script()] == [reply, reply]
    assert [r["model"] for r in requests] == ["fake-model", "fake-model"] and all(r["stream"] for r in requests)
    # The second request carries the first exchange: the conversation's history.
    assert [m["role"] for m in requests[1]["messages"]] == ["system", "user", "assistant", "user"]
    chats = stage_spans(run, "chat")
    assert [c.name for c in chats] == ["chat fake-model"] * 2
    assert all(c.attributes["wstrace.stream.chunk_count"] == len(REPLY_TOKENS) for c in chats)
    sdk_spans = [s for s in run.spans if s.scope.startswith("opentelemetry.instrumentation.openai")]
    if not sdk_spans:
        _skip_without_openai_v2(run)
    for span in sdk_spans:  # the SDK's spans join the turn, under invoke_agent
        assert any(a.name == "invoke_agent voice-assistant" for a in run.ancestors(span))


def _skip_without_openai_v2(run: DemoRun) -> None:
    if not _importable("opentelemetry.instrumentation.openai_v2"):
        pytest.skip(
            "opentelemetry-instrumentation-openai-v2 is not installed (or not importable): SDK spans not checked"
        )
    pytest.fail(f"openai-v2 is installed but made no spans: {run.stderr}")


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
