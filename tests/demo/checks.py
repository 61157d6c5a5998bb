"""Checks on a demo run's trace file, shared by the demo's test modules."""

from __future__ import annotations

from tests.demo.conftest import DemoRun
from wstrace.cli.export import SpanRecord
from wstrace.demo.run import latencies
from wstrace.demo.server import STAGE


STAGES = ("speech_to_text", "chat", "text_to_speech")
STREAM_TIMES = ("wstrace.stream.time_to_first_chunk", "wstrace.stream.time_to_last_chunk")


def service(span: SpanRecord) -> str:
    return str(span.resource.get("service.name"))


def assert_ran(run: DemoRun) -> None:
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    assert run.spans, "no spans in the trace file"


def assert_no_orphans(run: DemoRun) -> None:
    ids = {s.span_id for s in run.spans}
    orphans = [(s.name, service(s)) for s in run.spans if s.parent_span_id and s.parent_span_id not in ids]
    assert not orphans, f"spans whose parent is not in the file: {orphans}"
    assert len(ids) == len(run.spans), "duplicated span ids"


def stage_spans(run: DemoRun, operation: str) -> list[SpanRecord]:
    """The server's stream spans of one stage (not an SDK instrumentation's spans)."""
    return [
        s
        for s in run.spans
        if s.attributes.get(STAGE) == operation and s.scope == "wstrace" and service(s) == "voice-server"
    ]


def turn_of(run: DemoRun, span: SpanRecord) -> int:
    """The turn number of the ``invoke_agent`` span above a stage span."""
    agent = next(a for a in run.ancestors(span) if a.name == "invoke_agent voice-assistant")
    return int(agent.attributes["wstrace.voice.turn.number"])


def device_turn_of_receive(run: DemoRun, receive: SpanRecord) -> SpanRecord:
    """The device turn whose ``end_of_turn`` message the server's receive span handled.

    Message model: the receive span's parent is the device's send span. Connection model: the parent is the
    connection span, and the device's send span is the receive span's ``creation`` link.
    """
    parent = run.parent(receive)
    if parent is None or service(parent) != "voice-device":
        link = next(link for link in receive.links if link.attributes.get("wstrace.link.kind") == "creation")
        parent = run.by_id[link.span_id]
    assert parent.name == "send /voice" and parent.kind == "PRODUCER"
    turn = run.parent(parent)
    assert turn is not None and turn.name == "voice turn"
    return turn


def assert_asr_chain(run: DemoRun) -> None:
    """speech_to_text (ASR thread) → invoke_agent → process turns (the queue) → receive of that turn's end."""
    asr = stage_spans(run, "speech_to_text")
    assert len(asr) == len(run.turns())
    for span in asr:
        chain = run.ancestors(span)
        names = [s.name for s in chain]
        assert names[:3] == ["invoke_agent voice-assistant", "process turns", "receive /voice"], names
        agent, process, receive = chain[:3]
        assert process.kind == "CONSUMER" and process.attributes["messaging.destination.name"] == "turns"
        assert [link.span_id for link in process.links] == [receive.span_id]  # the creation context
        assert service(receive) == "voice-server" and receive.kind == "CONSUMER"
        turn = device_turn_of_receive(run, receive)
        assert turn.attributes["wstrace.voice.turn.number"] == agent.attributes["wstrace.voice.turn.number"]
        assert turn.attributes["gen_ai.conversation.id"] == agent.attributes["gen_ai.conversation.id"]


def assert_turn_complete(run: DemoRun, members: list[SpanRecord], turn: SpanRecord) -> None:
    """The device send, server receive, the three stages and both ends of the reply audio stream."""
    number = turn.attributes["wstrace.voice.turn.number"]
    # The device streams its 20 ms frames and end_of_turn under the turn span: one run, one send span.
    (uplink,) = [s for s in members if s.name == "send /voice" and service(s) == "voice-device"]
    assert uplink.kind == "PRODUCER" and uplink.parent_span_id == turn.span_id
    chunks = uplink.attributes["wstrace.stream.chunk_count"]
    assert chunks >= 20
    # The server receives them as one receive stream too, after a span for the first frame alone (nothing
    # told it yet that more would follow).
    receives = [s for s in members if s.name == "receive /voice" and service(s) == "voice-server"]
    assert len(receives) == 2
    (downlink,) = [s for s in receives if "wstrace.stream.chunk_count" in s.attributes]
    assert downlink.attributes["wstrace.stream.chunk_count"] == chunks
    assert downlink.attributes["messaging.message.body.size"] == uplink.attributes["messaging.message.body.size"]
    assert downlink.parent_span_id == uplink.span_id
    for operation in STAGES:
        found = [s for s in stage_spans(run, operation) if turn_of(run, s) == number]
        assert len(found) == 1, operation
        assert found[0].kind == "CLIENT" and found[0].name.startswith(operation + " sim-")
        assert found[0].attributes["gen_ai.operation.name"] == operation  # simulated: the stage is the GenAI span
        assert found[0].trace_id == turn.trace_id
        assert all(found[0].attributes.get(key) is not None for key in STREAM_TIMES)
    outbound = [
        s
        for s in members
        if s.name == "send /voice" and service(s) == "voice-server" and "wstrace.stream.chunk_count" in s.attributes
    ]
    assert len(outbound) == 1, "one outbound audio stream per turn"
    stream = outbound[0].attributes
    assert stream["wstrace.stream.chunk_count"] > 10  # 40 ms audio chunks and reply.done
    assert 0 < stream["wstrace.stream.time_to_first_chunk"] <= stream["wstrace.stream.time_to_last_chunk"]
    inbound = [s for s in members if s.name == "receive /voice" and service(s) == "voice-device"]
    assert (
        len(inbound) == 1
        and inbound[0].attributes["wstrace.stream.chunk_count"] == stream["wstrace.stream.chunk_count"]
    )
    latency = turn.attributes["wstrace.voice.turn.latency"]
    # The device's clock starts before end_of_turn leaves and stops after the first audio arrives.
    assert stream["wstrace.stream.time_to_first_chunk"] - 0.001 <= latency < 5


def assert_latencies(run: DemoRun, turns: int = 2) -> None:
    """The latency table, read from the trace file as the demo reads it: every figure of every turn, plausible."""
    rows = latencies(run.spans)
    assert [r.turn for r in rows] == list(range(1, turns + 1))
    for row in rows:
        assert row.utterance and row.transcript and row.reply
        for value in (row.asr, row.llm_ttft, row.tts_ttfb, row.voice_to_voice):
            assert value is not None and 0 < value < 5
