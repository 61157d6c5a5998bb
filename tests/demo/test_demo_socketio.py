"""``wstrace demo --stack socketio`` end to end: the device over Socket.IO, a gateway and an assistant process behind
a real private redis-server, judged by the trace file the run writes."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.demo.checks import STAGES, STREAM_TIMES, assert_latencies, assert_no_orphans, assert_ran, service
from tests.demo.conftest import DemoRun
from wstrace.cli.export import SpanRecord
from wstrace.demo import protocol
from wstrace.demo.run import Options, missing_requirements, run
from wstrace.demo.server import STAGE


SERVICES = {"voice-device", "voice-gateway", "voice-assistant"}
BUDGET = 40  # spans per turn


def members(run: DemoRun, turn: SpanRecord) -> list[SpanRecord]:
    return [s for s in run.spans if s.trace_id == turn.trace_id]


def one(spans: list[SpanRecord], name: str, where: str) -> SpanRecord:
    found = [s for s in spans if s.name == name and service(s) == where]
    assert len(found) == 1, (name, where, sorted((s.name, service(s)) for s in spans))
    return found[0]


def uplink_frames(spans: list[SpanRecord]) -> list[SpanRecord]:
    """The gateway's spans of the device's audio frames (one receive stream per turn: docs/adapters/socketio.md,
    "The receiving end")."""
    return [s for s in spans if s.name == "process audio /" and service(s) == "voice-gateway"]


def test_one_trace_per_turn_across_the_three_services(socketio_run: DemoRun) -> None:
    assert_ran(socketio_run)
    assert socketio_run.stderr == ""  # nothing logged by any of the processes
    assert {service(s) for s in socketio_run.spans} == SERVICES
    turns = socketio_run.turns()
    assert [t.attributes["wstrace.voice.turn.number"] for t in turns] == [1, 2]
    assert len({t.trace_id for t in turns}) == 2
    for turn in turns:
        assert turn.parent_span_id is None  # each turn is a root
        assert {service(s) for s in members(socketio_run, turn)} == SERVICES
    # Every stage span of the run is in a turn's trace.
    stages = [s for s in socketio_run.spans if s.attributes.get(STAGE) in STAGES]
    assert len(stages) == 3 * len(turns)
    assert {s.trace_id for s in stages} == {t.trace_id for t in turns}
    assert_no_orphans(socketio_run)


def test_the_turn_goes_device_gateway_redis_assistant_redis_gateway_device(socketio_run: DemoRun) -> None:
    """The parent chain of each turn, hop by hop, both ways."""
    run = socketio_run
    for turn in run.turns():
        spans = members(run, turn)
        number = turn.attributes["wstrace.voice.turn.number"]
        # Device → gateway: the frames as one stream of emits, then end_of_turn, both under the turn.
        audio = one(spans, "send audio /", "voice-device")
        assert audio.parent_span_id == turn.span_id and audio.kind == "PRODUCER"
        assert audio.attributes["wstrace.stream.chunk_count"] >= 20
        frames = uplink_frames(spans)
        assert frames and all(run.parent(s) == audio for s in frames)
        end = one(spans, "send end_of_turn /", "voice-device")
        assert end.parent_span_id == turn.span_id
        handled = one(spans, "process end_of_turn /", "voice-gateway")
        assert handled.parent_span_id == end.span_id and handled.kind == "CONSUMER"
        # Gateway → Redis → assistant: the utterance on the stream, with its context.
        xadd = one(spans, f"xadd {protocol.UTTERANCES}", "voice-gateway")
        assert xadd.parent_span_id == handled.span_id and xadd.kind == "PRODUCER"
        assert xadd.attributes["messaging.system"] == "redis"
        process = one(spans, f"process {protocol.UTTERANCES}", "voice-assistant")
        assert process.parent_span_id == xadd.span_id and process.kind == "CONSUMER"
        agent = one(spans, "invoke_agent voice-assistant", "voice-assistant")
        assert agent.parent_span_id == process.span_id
        assert agent.attributes["wstrace.voice.turn.number"] == number
        assert agent.attributes["gen_ai.conversation.id"] == turn.attributes["gen_ai.conversation.id"]
        for operation in STAGES:  # the engines' spans, as on the WebSocket stack
            (stage,) = [s for s in spans if s.attributes.get(STAGE) == operation]
            assert stage.parent_span_id == agent.span_id and stage.kind == "CLIENT"
            assert stage.attributes["gen_ai.operation.name"] == operation
            assert all(stage.attributes.get(key) is not None for key in STREAM_TIMES)
        # Assistant → Redis → gateway → device: each reply event emitted by the write-only manager, delivered by
        # the gateway's manager, handled by the device, in the turn's trace.
        for event in (protocol.REPLY_AUDIO, protocol.REPLY_DONE):
            received = [s for s in spans if s.name == f"process {event} /" and service(s) == "voice-device"]
            assert received, event
            for span in received:
                delivered = run.parent(span)
                assert delivered is not None and service(delivered) == "voice-gateway"
                assert delivered.name == f"send {event} /" and delivered.kind == "PRODUCER"
                emitted = run.parent(delivered)
                assert emitted is not None and service(emitted) == "voice-assistant"
                assert emitted.name == f"send {event} /"
                assert process in run.ancestors(emitted)
        # The device measured the reply from its first audio event.
        assert 0 < turn.attributes["wstrace.voice.turn.latency"] < 5


def test_a_turns_uplink_is_one_stream_on_each_side_and_the_turn_within_the_budget(socketio_run: DemoRun) -> None:
    """However long the utterance, a turn stays within the budget: the device's frames are one `send audio /`
    stream span on the device and one `process audio /` receive stream span on the gateway."""
    for turn in socketio_run.turns():
        spans = members(socketio_run, turn)
        assert len(spans) <= BUDGET, sorted(s.name for s in spans)
        (received,) = uplink_frames(spans)
        (sent,) = [s for s in spans if s.name == "send audio /" and service(s) == "voice-device"]
        assert received.attributes["wstrace.stream.chunk_count"] == sent.attributes["wstrace.stream.chunk_count"] > 10
        assert received.parent_span_id == sent.span_id


def test_latency_table_reads_the_assistants_stages(socketio_run: DemoRun) -> None:
    assert_latencies(socketio_run)


def test_the_waterfall_shows_the_hops(socketio_run: DemoRun) -> None:
    for name in (f"xadd {protocol.UTTERANCES}", f"process {protocol.UTTERANCES}", "process reply.done /"):
        assert name in socketio_run.stdout
    for who in ("gateway", "assistant"):
        assert f"turn 1   {who}" in socketio_run.stdout  # the live lines of both server processes


def test_missing_redis_server_is_one_clear_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no redis-server there
    options = Options(stack="socketio", out=tmp_path / "trace.jsonl")
    (line,) = [m for m in missing_requirements(options) if "redis-server" in m]
    assert "apt-get install redis-server" in line
    assert run(options) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"wstrace demo: {line}"
    assert not options.out.exists()  # nothing ran
    assert not any("redis-server" in m for m in missing_requirements(Options(out=options.out)))
