"""The demo's parts on their own: protocol, latency profile, script, audio, requirements, SDK set-up.

Folding the waterfall is :mod:`wstrace.cli.fold`'s, tested in ``tests/cli/test_fold.py``.
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
import sys
from array import array
from pathlib import Path

import pytest

from tests.missing import skip_or_fail
from wstrace.cli import demo as cli_demo
from wstrace.demo import audio, dialogue, protocol, redis_server, run, telemetry
from wstrace.demo.profile import PROFILES, Pacing, Stage


# ---------------------------------------------------------------------------------------------------------
# Protocol


def test_url_carries_the_audio_format_and_conversation() -> None:
    url = protocol.connect_url("127.0.0.1", 8765, "abc123")
    path = url.split("8765", 1)[1]
    assert path.startswith("/voice?")
    assert protocol.parse_query(path) == (protocol.AudioFormat(), "abc123")
    with pytest.raises(ValueError):
        protocol.parse_query("/voice?sample_rate=fast")


def test_control_messages_round_trip_and_garbage_is_ignored() -> None:
    assert protocol.parse_control(protocol.end_of_turn(3)) == protocol.EndOfTurn(3)
    done = protocol.ReplyDone(2, transcript="hi", reply="hello", audio_ms=1234.5, error="")
    assert protocol.parse_control(protocol.reply_done(done)) == done
    for garbage in ("", "not json", "[]", '{"type": "end_of_turn"}', '{"type": "other", "turn": 1}'):
        assert protocol.parse_control(garbage) is None


def test_only_reply_done_ends_the_reply_stream() -> None:
    assert protocol.is_reply_end(protocol.reply_done(protocol.ReplyDone(1)))
    assert not protocol.is_reply_end(protocol.end_of_turn(1))
    assert not protocol.is_reply_end(b'{"type": "reply.done"}')  # audio is binary, never the end marker
    assert not protocol.is_reply_end(None)


def test_socketio_events_round_trip_and_garbage_is_ignored() -> None:
    assert protocol.parse_auth(protocol.sio_auth("abc123")) == (protocol.AudioFormat(), "abc123")
    for garbage in (None, "x", {}, {"encoding": "linear16", "sample_rate": "fast", "channels": 1}):
        with pytest.raises(ValueError):
            protocol.parse_auth(garbage)
    pcm = audio.speech("hello", "p")[: audio.REPLY_CHUNK_BYTES * 3]
    packet = protocol.audio_packet(4, pcm)
    assert packet["turn"] == 4 and isinstance(packet["pcm"], str)  # text: it keeps its trace context
    assert protocol.parse_audio_packet(packet) == pcm
    for garbage in (None, b"raw", {"pcm": 1}, {"pcm": "not base64!"}):
        assert protocol.parse_audio_packet(garbage) is None
    done = protocol.ReplyDone(2, transcript="hi", reply="hello", audio_ms=12.5, error="boom")
    assert protocol.parse_reply_done(protocol.reply_done_fields(done)) == done
    for garbage in (None, [], {"turn": "two"}, {"reply": "no turn"}):
        assert protocol.parse_reply_done(garbage) is None


# ---------------------------------------------------------------------------------------------------------
# Latency profile and script


def test_draws_are_seeded_per_turn_and_stage_and_scaled_by_speed() -> None:
    profile = PROFILES["tuned"]
    a, b = Pacing(profile, 5), Pacing(profile, 5, speed=10)
    first = a.draw(profile.llm_ttft, a.rng(2, "llm"))
    assert first == pytest.approx(10 * b.draw(profile.llm_ttft, b.rng(2, "llm")))
    assert first != a.draw(profile.llm_ttft, a.rng(3, "llm"))
    with pytest.raises(ValueError):
        Pacing(profile, 1, speed=0)


def test_draws_have_the_profiles_median_and_95th_percentile() -> None:
    stage = Stage(0.3, 0.5)
    pacing = Pacing(PROFILES["tuned"], 1)
    rng = pacing.rng(1, "statistics")
    draws = sorted(pacing.sample(stage, rng) for _ in range(20000))
    assert statistics.median(draws) == pytest.approx(0.3, rel=0.03)
    assert draws[int(0.95 * len(draws))] == pytest.approx(0.5, rel=0.05)
    assert max(draws) <= 4 * 0.3


def test_the_script_and_replies_follow_the_seed() -> None:
    assert [dialogue.utterance(3, t) for t in range(1, 4)] == [dialogue.utterance(3, t) for t in range(1, 4)]
    assert [dialogue.utterance(3, t) for t in range(1, 4)] != [dialogue.utterance(4, t) for t in range(1, 4)]
    assert dialogue.utterance(3, 1) == dialogue.utterance(3, 1 + len(dialogue.UTTERANCES))  # cycles
    for line in dialogue.UTTERANCES:
        heard = line.lower().rstrip("?.!")
        answer = dialogue.reply(heard, 1, 1)
        assert answer == dialogue.reply(heard, 1, 1) and not answer.startswith("You said")  # every line is understood
        assert "".join(dialogue.tokens(answer)) == answer.replace("  ", " ")
    assert dialogue.reply("", 1, 1).startswith("Sorry")
    assert dialogue.reply("purple elephants", 1, 1).startswith("You said purple elephants")


# ---------------------------------------------------------------------------------------------------------
# Audio


def _samples(pcm: bytes) -> array[int]:
    values = array("h", pcm)
    if sys.byteorder == "big":
        values.byteswap()
    return values


def test_speech_is_16_khz_pcm_of_a_plausible_length_and_level() -> None:
    pcm = audio.speech("What's the weather like in Paris?", "1:1:user")
    assert pcm == audio.speech("What's the weather like in Paris?", "1:1:user")
    assert 1.0 < audio.duration(pcm) < 3.0
    samples = _samples(pcm)
    rms = math.sqrt(sum(s * s for s in samples) / len(samples))
    assert 500 < rms < 8000 and max(abs(s) for s in samples) < 32767
    frames = audio.chunks(pcm, audio.FRAME_BYTES)
    assert audio.FRAME_BYTES == 640 and {len(f) for f in frames} == {640}
    assert len(frames) == math.ceil(len(pcm) / 640)


def test_silence_is_room_noise_not_zeros() -> None:
    pcm = audio.silence(0.2, "x")
    assert len(pcm) == 2 * 3200 and any(pcm) and max(abs(s) for s in _samples(pcm)) < 100


def test_numpy_and_stdlib_render_the_same_plan() -> None:
    np = audio.numpy_or_none()
    if np is None:
        pytest.skip("numpy is not installed (optional): the standard-library renderer is the one in use")
    plan = audio._plan("Take a light jacket tonight.", "s")
    fast, slow = _samples(audio._render_numpy(np, plan, "s")), _samples(audio._render_stdlib(plan, "s"))
    assert len(fast) == len(slow)

    def rms(values: array[int]) -> float:
        return math.sqrt(sum(v * v for v in values) / len(values))

    assert rms(fast) == pytest.approx(rms(slow), rel=0.1)


def test_resampling_keeps_the_duration() -> None:
    source = audio.speech("hello there", "r")
    out = audio.resample(source, 16000, 22050)
    assert abs(audio.duration(source) * 22050 / 16000 - audio.duration(out)) < 0.001


# ---------------------------------------------------------------------------------------------------------
# Requirements and set-up


def test_missing_optional_requirements_are_named_with_how_to_get_them(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setattr(audio, "espeak_path", lambda: None)
    monkeypatch.setattr(run, "_installed", lambda module: False)
    parser = argparse.ArgumentParser()
    cli_demo.add_arguments(parser)
    args = parser.parse_args(["--real-audio", "--llm-url", "http://127.0.0.1:9/v1", "--out", str(tmp_path / "t")])
    assert cli_demo.run_from_args(args) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3
    assert "apt-get install espeak-ng" in lines[0]
    assert "pip install 'wstrace[demo-audio]'" in lines[1] and "pocketsphinx" in lines[1]
    assert "pip install 'wstrace[demo-llm]'" in lines[2] and "openai" in lines[2]
    assert not (tmp_path / "t").exists()


def test_socketio_packages_missing_are_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setattr(run, "_installed", lambda module: module != "socketio")
    monkeypatch.setattr(redis_server, "executable", lambda: "/usr/bin/redis-server")
    assert run.run(run.Options(stack="socketio", out=tmp_path / "t")) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line == "wstrace demo: --stack socketio needs python-socketio: pip install 'wstrace[demo-socketio]'"
    assert not (tmp_path / "t").exists()


def test_the_launcher_runs_a_private_redis_server_and_stops_it() -> None:
    path = redis_server.executable()
    if path is None:
        skip_or_fail(f"redis-server is not on PATH: {redis_server.INSTALL}")
    with redis_server.start(path) as server:
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        assert redis_server.answers(server.port)
    assert server.process.returncode is not None and not redis_server.answers(server.port)
    with pytest.raises(OSError, match="did not answer PING"):
        redis_server.start("/bin/false", timeout=0.2, attempts=1)


def test_options_are_checked_by_the_parser(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    cli_demo.add_arguments(parser)
    defaults = parser.parse_args([])
    assert (defaults.turns, defaults.model, defaults.envelope, defaults.speed) == (3, "message", "negotiate", 1.0)
    assert defaults.out == Path("wstrace-traces.jsonl")
    assert defaults.stack == "websockets"
    assert parser.parse_args(["--stack", "socketio"]).stack == "socketio"
    bad_options = (
        ["--turns", "0"],
        ["--speed", "0"],
        ["--model", "session"],
        ["--envelope", "maybe"],
        ["--stack", "x"],
    )
    for bad in bad_options:
        with pytest.raises(SystemExit):
            parser.parse_args(bad)
    capsys.readouterr()


def test_a_missing_otlp_exporter_is_one_line_and_the_file_still_works(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    said: list[str] = []
    tel = telemetry.start("voice-test", tmp_path / "t.jsonl", model="message", envelope="off", say=said.append)
    try:
        with tel.provider.get_tracer("test").start_as_current_span("hello"):
            pass
    finally:
        tel.shutdown()
    assert not tel.otlp
    assert len(said) == 1 and said[0].startswith("OTEL_EXPORTER_OTLP_ENDPOINT is set, but")
    assert "pip install opentelemetry-exporter-otlp-proto-http" in said[0]
    spans = run.read_spans(tmp_path / "t.jsonl")
    assert [(s.name, s.resource["service.name"]) for s in spans] == [("hello", "voice-test")]


def test_an_optional_instrumentation_is_loaded_quietly_or_said_broken(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Not installed: left out without a word. Installed but failing to import: one warning saying what is lost."""
    (tmp_path / "broken_instrumentation.py").write_text("import no_such_dependency_of_it\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    with caplog.at_level(logging.WARNING, logger=telemetry.__name__):
        assert telemetry._optional_instrumentor("no_such_instrumentation", "Instrumentor", "its spans") is None
        assert not caplog.records
        assert telemetry._optional_instrumentor("broken_instrumentation", "Instrumentor", "its spans") is None
    (record,) = caplog.records
    assert record.getMessage() == (
        "cannot load broken_instrumentation (No module named 'no_such_dependency_of_it'); its spans are left out"
    )


def test_the_application_reads_like_one() -> None:
    """Device, server and engines import no SDK and no wstrace internals, and start spans only for turns.

    The one other span call makes the LLM stage's stream span current, so that the SDK's spans nest under it.

    The import-linter contract proposed with the demo covers wstrace's own modules; this covers the SDK,
    which import-linter cannot name (a subpackage of an external package).
    """
    import ast  # noqa: PLC0415

    import wstrace.demo  # noqa: PLC0415

    root = Path(wstrace.demo.__file__).parent
    span_calls: dict[str, int] = {}
    made_current: dict[str, int] = {}
    for name in ("audio", "device", "dialogue", "engines", "profile", "protocol", "server"):
        tree = ast.parse((root / f"{name}.py").read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            modules = []
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [node.module or ""]
            for module in modules:
                assert not module.startswith(("opentelemetry.sdk", "wstrace.connection", "wstrace.instrumentation")), (
                    name,
                    module,
                )
                assert module in ("opentelemetry", "opentelemetry.trace") or not module.startswith("opentelemetry")
            if isinstance(node, ast.Attribute) and node.attr in ("start_span", "start_as_current_span"):
                span_calls[name] = span_calls.get(name, 0) + 1
            if isinstance(node, ast.Attribute) and node.attr == "use_span":
                made_current[name] = made_current.get(name, 0) + 1
    # The device's conversation and turn spans, the server's invoke_agent span: nothing else.
    assert span_calls == {"device": 2, "server": 1}
    assert made_current == {"server": 1}


def test_the_view_hint_works_when_pasted(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``wstrace`` when the shell finds this very command; its path when the venv is not on PATH."""
    here = Path(sys.executable).parent
    monkeypatch.setenv("PATH", f"{here}:/usr/bin:/bin")
    assert run.view_command() == "wstrace"
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.chdir(tmp_path)  # elsewhere: an absolute path, not one that climbs out of here
    assert run.view_command() == str(here / "wstrace")
