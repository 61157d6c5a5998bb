"""``wstrace demo`` end to end: the real command in a subprocess, judged by the trace file it writes."""

from __future__ import annotations

import importlib.util
import itertools
import json
import re
import socket
from pathlib import Path

import pytest
from google.protobuf.json_format import Parse
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.demo.checks import (
    STAGES,
    STREAM_TIMES,
    assert_asr_chain,
    assert_latencies,
    assert_no_orphans,
    assert_ran,
    assert_turn_complete,
    service,
    stage_spans,
    turn_of,
)
from tests.demo.conftest import SPEED, DemoRun, run_demo
from wstrace.cli.export import read_trace_file


# ---------------------------------------------------------------------------------------------------------
# The default run: message model, envelope negotiated


def test_message_model_makes_one_trace_per_turn(message_run: DemoRun) -> None:
    assert_ran(message_run)
    turns = message_run.turns()
    assert [t.attributes["wstrace.voice.turn.number"] for t in turns] == [1, 2]
    assert len({t.trace_id for t in turns}) == 2
    for turn in turns:
        assert turn.parent_span_id is None  # each turn is a root
        members = [s for s in message_run.spans if s.trace_id == turn.trace_id]
        assert_turn_complete(message_run, members, turn)
    # Every stage span of the run is in a turn's trace: nothing was cut off by the queue or the pool.
    stage_traces = {s.trace_id for op in STAGES for s in stage_spans(message_run, op)}
    assert stage_traces == {t.trace_id for t in turns}


def test_no_orphan_spans(message_run: DemoRun, connection_run: DemoRun, plain_run: DemoRun) -> None:
    for run in (message_run, connection_run, plain_run):
        assert_ran(run)
        assert_no_orphans(run)


def test_context_crosses_the_queue_and_the_thread_pool(message_run: DemoRun, connection_run: DemoRun) -> None:
    assert_asr_chain(message_run)
    assert_asr_chain(connection_run)


def test_waterfall_headers_count_every_span_in_the_file(message_run: DemoRun) -> None:
    """Each trace header the demo prints counts all of that trace's spans in the file, folded rows or not."""
    lines = message_run.stdout.splitlines()
    checked = 0
    for title, facts in itertools.pairwise(lines):
        if not title.startswith("trace "):
            continue
        trace_id = title.split()[1]
        in_file = sum(1 for s in message_run.spans if s.trace_id == trace_id)
        spans = int(re.search(r"([\d,]+) spans?(?:  ·|$)", facts)[1].replace(",", ""))  # type: ignore[index]
        assert spans == in_file, facts
        checked += 1
    assert checked >= len(message_run.turns())


def test_both_services_write_one_file(message_run: DemoRun) -> None:
    assert {service(s) for s in message_run.spans} == {"voice-device", "voice-server"}
    for name in ("voice turn", "GET /voice"):
        assert any(service(s) == "voice-device" for s in message_run.named(name))
    for name in ("invoke_agent", "process turns", "GET /voice"):
        assert any(service(s) == "voice-server" for s in message_run.named(name))


def test_the_file_is_otlp_json(message_run: DemoRun) -> None:
    loaded = read_trace_file(message_run.out)
    assert (loaded.corrupt_lines, loaded.bad_spans, loaded.blank_lines) == (0, 0, 0)
    total = 0
    for line in message_run.out.read_text(encoding="utf-8").splitlines():
        request = ExportTraceServiceRequest()
        Parse(line, request)  # the protobuf JSON mapping of the OTLP request, line by line
        total += sum(len(scope.spans) for rs in request.resource_spans for scope in rs.scope_spans)
        assert json.loads(line)["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["traceId"]  # hex, not base64
    assert total == len(message_run.spans)


def test_latency_table_reads_every_figure_from_the_file(message_run: DemoRun) -> None:
    assert_latencies(message_run)


def test_spans_per_turn_are_bounded(message_run: DemoRun) -> None:
    """However long the utterance and the answer: the turn, the uplink (one run on the device; on the server
    its first frame and one receive stream), the queue's process span, the agent and its three stages, and
    the reply audio stream on each side. Not a span per audio frame either way."""
    for turn in message_run.turns():
        members = [s for s in message_run.spans if s.trace_id == turn.trace_id]
        assert len(members) == 11, sorted(s.name for s in members)


# ---------------------------------------------------------------------------------------------------------
# Connection model, seeds, no envelope, OTLP


def test_connection_model_makes_one_trace_per_connection(connection_run: DemoRun) -> None:
    assert_ran(connection_run)
    assert len({s.trace_id for s in connection_run.spans}) == 1
    roots = [s for s in connection_run.spans if s.parent_span_id is None]
    assert [(r.name, service(r)) for r in roots] == [("voice conversation", "voice-device")]
    connections = connection_run.named("websocket /voice")
    assert {service(s) for s in connections} == {"voice-device", "voice-server"}
    for turn in connection_run.turns():
        (uplink,) = [s for s in connection_run.named("send /voice", "voice-device") if s.parent_span_id == turn.span_id]
        assert uplink.attributes["wstrace.stream.chunk_count"] >= 20  # the turn's frames and end_of_turn
    for operation in STAGES:
        assert sorted(turn_of(connection_run, s) for s in stage_spans(connection_run, operation)) == [1, 2]
    streams = [
        s for s in connection_run.named("send /voice", "voice-server") if "wstrace.stream.chunk_count" in s.attributes
    ]
    assert len(streams) == 2 and all(all(key in s.attributes for key in STREAM_TIMES) for s in streams)
    assert all(t.attributes["wstrace.voice.turn.latency"] > 0 for t in connection_run.turns())


def test_a_seed_makes_the_conversation_deterministic(
    message_run: DemoRun, connection_run: DemoRun, plain_run: DemoRun
) -> None:
    script = message_run.script()
    assert len(script) == 2 and all(all(part for part in turn) for turn in script)
    for utterance, transcript, _ in script:
        assert transcript == utterance.lower().rstrip("?.!")  # the simulated ASR hears the scripted line
    assert connection_run.script() == script  # same seed, other model and envelope: same conversation
    assert plain_run.script() != script  # another seed: another conversation


def test_without_envelope_the_device_keeps_its_turn_and_the_server_its_pipeline(plain_run: DemoRun) -> None:
    assert_ran(plain_run)
    for turn in plain_run.turns():
        members = [s for s in plain_run.spans if s.trace_id == turn.trace_id]
        assert {service(s) for s in members} == {"voice-device"}  # nothing crosses without an envelope
        assert any(s.name == "receive /voice" and "wstrace.stream.chunk_count" in s.attributes for s in members)
    for asr in stage_spans(plain_run, "speech_to_text"):
        chain = plain_run.ancestors(asr)
        assert [s.name for s in chain] == ["invoke_agent voice-assistant", "process turns", "receive /voice"]
        assert chain[-1].parent_span_id is None
        assert any(link.attributes.get("wstrace.link.kind") == "handshake" for link in chain[-1].links)


def test_otlp_export_when_the_endpoint_is_set(plain_run: DemoRun) -> None:
    requests = plain_run.extra["collector"]
    try:
        installed = importlib.util.find_spec("opentelemetry.exporter.otlp.proto.http") is not None
    except ModuleNotFoundError:  # the opentelemetry.exporter namespace itself is absent
        installed = False
    if not installed:
        assert not requests
        lines = [line for line in plain_run.stderr.splitlines() if "opentelemetry-exporter-otlp-proto-http" in line]
        assert len(lines) == 1 and "OTEL_EXPORTER_OTLP_ENDPOINT" in lines[0]
        pytest.skip("opentelemetry-exporter-otlp-proto-http is not installed: checked the one-line notice")
    received = 0
    services = set()
    for path, body in requests:
        assert path == "/v1/traces"
        request = ExportTraceServiceRequest.FromString(body)
        for resource_spans in request.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            services.add(attributes["service.name"])
            received += sum(len(scope.spans) for scope in resource_spans.scope_spans)
    assert services == {"voice-device", "voice-server"}
    assert received == len(plain_run.spans)
    assert plain_run.returncode == 0 and "also sent over OTLP" in plain_run.stdout


def test_a_dead_otlp_endpoint_is_said_and_fails_the_run(tmp_path: Path) -> None:
    """Asked for OTLP and nothing got through: the demo says so, names the endpoint, and exits 1."""
    if importlib.util.find_spec("opentelemetry.exporter.otlp.proto.http") is None:
        pytest.skip("opentelemetry-exporter-otlp-proto-http is not installed")
    with socket.socket() as sock:  # a port nothing listens on: bound, never listening
        sock.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{sock.getsockname()[1]}"
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_EXPORTER_OTLP_TIMEOUT": "1"}
        run = run_demo(tmp_path, "--turns", "1", "--speed", SPEED, "--envelope", "off", env=env)
    assert run.returncode == 1, run.stderr
    assert f"nothing reached the OTLP endpoint {endpoint}" in run.stderr
    assert "also sent over OTLP" not in run.stdout
    assert run.spans  # the trace file still has every span
