"""Hostile input never raises in the instrumented path and never changes or loses a payload.

Three layers: hypothesis properties (``harness.py``) over the envelope decoders, the JSON-field mode,
handshake extraction and the Redis carrier; a replay of the committed corpus (``tests/corpus/fuzz``,
grown by the atheris harness); and hostile handshakes and frames sent by a raw socket to every
instrumented server, and by a raw server to every instrumented client.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, assume, given, settings, strategies as st
from opentelemetry import baggage, context as otel_context

from tests.conftest import Telemetry
from tests.instrumentation.peers import CLIENTS, SERVERS
from tests.reliability import harness
from tests.reliability.apps import settle
from tests.reliability.rawws import RawClient, RawServer
from tests.routes import ROUTES_ENV
from wstrace import envelope as codec
from wstrace.config import Config
from wstrace.connection import ConnectionTracer
from wstrace.instrumentation.aiohttp import AiohttpInstrumentor
from wstrace.instrumentation.starlette import StarletteInstrumentor
from wstrace.instrumentation.tornado import TornadoInstrumentor
from wstrace.instrumentation.websocket_client import WebsocketClientInstrumentor
from wstrace.instrumentation.websockets import WebsocketsInstrumentor
from wstrace.redis import RedisHop


ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "tests" / "corpus" / "fuzz"
TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(autouse=True)
def _quiet_propagators() -> Iterator[None]:
    """The W3C propagators log every malformed entry; thousands of them only slow the run down."""
    logger = logging.getLogger("opentelemetry")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(level)


# Strategies --------------------------------------------------------------------------------------

# Payloads that look like envelopes, or nearly: magic prefixes with random or well-formed headers.
_PREFIXES = ["", "\x1e", "\x1ewt", "\x1ewt1", "\x1ewt1\x1e", "\x1ewt1a=b\x1e", "\x1ewt2", "\x1ewt\x01", "\x1eWT1"]
_B_PREFIXES = [p.encode() for p in _PREFIXES] + [b"\x1ewt\x01\x00\x00", b"\x1ewt\x01\xff\xff", b"\x1ewt\x01\x00\x03a=b"]
_JSON_PREFIXES = ["{", ' {"_wstrace":{}', '{"_wstrace":{"a":"b"},', '{"_wstrace":{"K":"v"}}', '{"_wstrace":[1]}']
look_alike_text = st.builds(lambda p, r: p + r, st.sampled_from(_PREFIXES + _JSON_PREFIXES), st.text(max_size=64))
look_alike_bytes = st.builds(
    lambda p, r: p + r, st.sampled_from(_B_PREFIXES + [p.encode() for p in _JSON_PREFIXES]), st.binary(max_size=64)
)
# Text with lone surrogates and invalid UTF-8, as a frame of the wrong type or a broken peer gives.
wild_text = st.text(st.characters(codec="utf-8") | st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF))


def _w3c_value(kind: str) -> st.SearchStrategy[str]:
    if kind == "traceparent":
        hexes = st.text("0123456789abcdefABCDEF-", min_size=0, max_size=80)
        return hexes | st.just(TP) | st.builds(lambda n: TP + "-" + "0" * n, st.integers(0, 9000))
    if kind == "tracestate":
        member = st.from_regex(r"[a-z][a-z0-9_*/-]{0,20}(@[a-z]{1,5})?=[ -~]{0,30}", fullmatch=True)
        return st.lists(member, max_size=40).map(",".join) | st.builds(lambda n: "a=" + "b" * n, st.integers(0, 1000))
    entry = st.from_regex(r"[!#-+\--~]{1,12}=[ -~]{0,20}(;[a-z]=[a-z])?", fullmatch=True)
    return st.lists(entry, max_size=200).map(",".join) | st.builds(lambda n: "k=" + "v" * n, st.integers(8000, 9000))


hostile_headers = st.lists(
    st.sampled_from(["traceparent", "tracestate", "baggage", "wstrace-session", "wstrace-envelope", "b3"]).flatmap(
        lambda name: st.tuples(
            st.just(name),
            _w3c_value(name) if name in ("traceparent", "tracestate", "baggage") else st.text(max_size=40),
        )
    ),
    max_size=8,
)


# Properties --------------------------------------------------------------------------------------


@FUZZ
@given(wire=look_alike_text | wild_text, raw=look_alike_bytes | st.binary())
def test_any_received_frame_is_delivered_unchanged_or_stripped(wire: str, raw: bytes) -> None:
    """A negotiated connection hands the application every frame as is, or minus exactly one envelope."""
    for fmt in ("frame", "json"):
        _, server = harness._pair(fmt)
        for frame, text in ((wire, True), (raw, False), (raw, True)):
            payload = server.received(frame, text=text)
            server.receive_done()
            if fmt == "frame":
                # Only the layout of the frame's own type is an envelope (protocol 1.1, section 8).
                harness.assert_frame_stripping(frame, payload, codec.decode(frame, text=text).carrier, harness.CAP)
            else:
                decoded = codec.decode_json_field(frame)
                harness.assert_json_stripping(frame, payload, decoded.carrier, "_wstrace", harness.CAP)


@FUZZ
@given(
    payload=look_alike_text | wild_text | look_alike_bytes | st.binary(),
    as_text=st.booleans(),
    bag=st.text(max_size=40) | st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), max_size=3),
    fmt=st.sampled_from(["frame", "json"]),
)
def test_any_payload_round_trips(payload: str | bytes, as_text: bool, bag: str, fmt: str) -> None:
    """What one application sends, the other receives, in both directions, whatever the current baggage."""
    expected = payload
    if isinstance(payload, str) and not as_text:
        # A str sent as binary goes out as its UTF-8 bytes, as every library sends it.
        assume(not any(0xD800 <= ord(c) <= 0xDFFF for c in payload))
        expected = payload.encode("utf-8")
    client, server = harness._pair(fmt)
    token = otel_context.attach(baggage.set_baggage("b", bag))
    try:
        for sender, receiver in ((client, server), (server, client)):
            wire, handle = sender.send_start(payload, text=as_text)
            sender.send_end(handle)
            if isinstance(wire, str) and not as_text:
                wire = wire.encode("utf-8")  # what the library puts in a binary frame
            assert receiver.received(wire, text=as_text) == expected
            receiver.receive_done()
    finally:
        otel_context.detach(token)


@FUZZ
@given(headers=hostile_headers, query=st.text(max_size=200), offered=st.lists(st.text(max_size=140), max_size=4))
def test_hostile_handshake_is_traced_without_peer_text(
    headers: list[tuple[str, str]], query: str, offered: list[str]
) -> None:
    """Malformed, oversized and adversarial traceparent, tracestate and baggage (over the W3C limits)."""
    offered = offered + [f"wstrace.tp.{v}" for v in offered]
    for trust in ("parent", "link", "ignore"):
        harness._exporter.clear()
        config = Config.load({"WSTRACE_ROUTES": ROUTES_ENV}, trust=trust, handshake_sources="headers,query,subprotocol")
        server = ConnectionTracer.server(
            harness._tracer, config, path="/chat", query=query, headers=headers, subprotocols=offered
        )
        server.opened(response_headers=server.response_headers())
        assert server.recording, "hostile context never turns tracing off for the connection"
        assert server.received("m") == "m"
        server.receive_done()
        server.closed(code=1000, initiator="remote")
        spans = list(harness._exporter.get_finished_spans())
        assert sorted(s.name for s in spans) == ["GET /chat", "close /chat", "receive /chat"]
        harness.span_attributes_are_ours(spans)


@FUZZ
@given(raw=st.binary(max_size=300) | look_alike_bytes)
def test_query_subprotocol_and_redis_targets(raw: bytes) -> None:
    """The carrier extractors and the Redis decoders, through the harness's own checks."""
    for target in ("query", "subprotocols", "redis", "handshake"):
        harness.check(harness.input_for(target, raw))


# The corpus --------------------------------------------------------------------------------------


def _corpus(target: str) -> list[Path]:
    """The corpus files whose first byte selects ``target`` (named ``<target>-<sha1>``, or as libFuzzer names them)."""
    names = list(harness.TARGETS)
    return sorted(p for p in CORPUS.iterdir() if (data := p.read_bytes()) and names[data[0] % len(names)] == target)


@pytest.mark.parametrize("target", list(harness.TARGETS))
def test_corpus_replays(target: str) -> None:
    """Every committed input (seeds, regressions and what atheris found) still holds every property."""
    files = _corpus(target)
    assert files, f"no corpus files for {target}"
    failures = []
    for path in files:
        data = path.read_bytes()
        try:
            harness.check(data)
        except Exception as exc:  # collect them all: one run shows every regression
            failures.append(f"{path.name}: {type(exc).__name__}: {exc}")
    assert not failures, "\n".join(failures)


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None, reason="atheris is not installed")
def test_atheris_harness_runs_clean(tmp_path: Path) -> None:
    """A short coverage-guided run from the corpus finds nothing (the long runs are done by hand)."""
    work = tmp_path / "corpus"
    work.mkdir()
    for path in CORPUS.iterdir():
        (work / path.name).write_bytes(path.read_bytes())
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.reliability.fuzz_atheris",
            str(work),
            "-runs=4000",
            "-max_len=2048",
            f"-artifact_prefix={tmp_path}/",
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Done 4000 runs" in result.stderr
    assert not list(tmp_path.glob("crash-*"))


# Redis, for real ---------------------------------------------------------------------------------


def test_hostile_redis_values_come_back_exactly(redis_port: int) -> None:
    """Values written by someone else (truncated, look-alike, garbage) are read back as they were."""
    client = redis.Redis(port=redis_port)
    hop = RedisHop(client)
    values = [path.read_bytes()[1:] for path in _corpus("redis") + _corpus("decode-bytes") + _corpus("decode-text")]
    client.delete("hostile", "hostile-stream")
    client.rpush("hostile", *values)
    for value in values:
        carried = hop.lpop("hostile")
        decoded = codec.decode(value)
        if decoded.carrier is None:
            assert carried.item == value
        else:
            harness.assert_frame_stripping(value, carried.item, decoded.carrier, harness.CAP)
    for value in values:
        client.xadd("hostile-stream", {"wstrace": value, "app": value})
    entries = hop.xread({"hostile-stream": 0})
    assert len(entries) == len(values)
    for entry, value in zip(entries, values, strict=True):
        fields = entry.item.fields
        assert fields[b"app"] == value, "the application's own field is never touched"
        stripped = codec.decode(value)
        if stripped.carrier is None or stripped.payload != b"":
            assert fields[b"wstrace"] == value, "a field that is no empty envelope is kept"
    client.close()


# Real connections --------------------------------------------------------------------------------

# Upgrade requests whose tracing headers are hostile; everything else is a valid handshake.
HOSTILE_HANDSHAKES: dict[str, list[tuple[bytes, bytes]]] = {
    "obs-text token": [(b"Sec-WebSocket-Protocol", b"wstrace.tp.\xff\xfe")],
    "blank in token": [(b"Sec-WebSocket-Protocol", b"wstrace.tp.a b")],
    "empty token": [(b"Sec-WebSocket-Protocol", b"wstrace.tp.")],
    "long token": [(b"Sec-WebSocket-Protocol", b"wstrace.tp." + b"0" * 600)],
    "many tokens": [(b"Sec-WebSocket-Protocol", b",".join([b"wstrace.tp.x"] * 100))],
    "obs-text baggage": [(b"traceparent", TP.encode()), (b"baggage", b"k=\xff\xfe,j=%ED%A0%80")],
    "baggage over 8192 in parts": [(b"traceparent", TP.encode())] + [(b"baggage", b"k=" + b"v" * 3000)] * 3,
    "baggage over 180 members": [(b"traceparent", TP.encode()), (b"baggage", b",".join([b"k=v"] * 400))],
    "tracestate over 512": [(b"traceparent", TP.encode()), (b"tracestate", b",".join([b"a=b"] * 300))],
    "traceparent junk": [(b"traceparent", b"00-" + b"f" * 4000), (b"traceparent", b"\xff" * 55)],
    "repeated traceparent": [(b"traceparent", TP.encode())] * 20,
    "session junk": [(b"wstrace-session", b"\xff" * 32), (b"wstrace-session", b"A" * 32)],
    "offer junk": [(b"wstrace-envelope", b"frame/1\xff"), (b"wstrace-envelope", b"json/2, frame/1")],
    "query": [],
}
QUERY = b"/matrix?traceparent=" + b"%ED%A0%80" * 10 + b"&tracestate=&baggage=" + b"%FF" * 100


def _servers_instrumented(telemetry: Telemetry) -> list[Any]:
    instrumentors = [WebsocketsInstrumentor(), AiohttpInstrumentor(), StarletteInstrumentor(), TornadoInstrumentor()]
    for instrumentor in instrumentors:
        instrumentor.instrument(
            tracer_provider=telemetry.provider, handshake_sources="headers,query,subprotocol", trust="link"
        )
    return instrumentors


async def _handshake_outcomes(url: str) -> dict[str, tuple[int, Any]]:
    """Each hostile handshake's status and, if it opened, the echo of one message."""
    outcomes: dict[str, tuple[int, Any]] = {}
    for name, headers in HOSTILE_HANDSHAKES.items():
        target = QUERY if name == "query" else None
        client = await RawClient.connect(url, headers, target=target)
        echo = None
        if client.status == 101:
            await client.send("ping")
            echo = codec.decode(await client.recv()).payload  # an envelope only if one was agreed
            await client.close_cleanly()
        else:
            await client.close()
        outcomes[name] = (client.status, echo)
    return outcomes


@pytest.mark.parametrize("server", ["websockets", "aiohttp", "starlette-uvicorn", "tornado"])
def test_hostile_handshakes_against_every_server(telemetry: Telemetry, server: str) -> None:
    """Every hostile upgrade gets the answer the un-instrumented server gives, and its echo works."""

    async def run() -> dict[str, tuple[int, Any]]:
        async with SERVERS[server]() as url:
            return await _handshake_outcomes(url)

    bare = asyncio.run(run())
    instrumentors = _servers_instrumented(telemetry)
    try:
        traced = asyncio.run(run())
    finally:
        for instrumentor in instrumentors:
            instrumentor.uninstrument()
    assert traced == bare
    assert sum(status == 101 for status, _ in traced.values()) >= len(HOSTILE_HANDSHAKES) - 2
    handshakes = [s for s in telemetry.named("GET /matrix") if s.kind.name == "SERVER"]
    opened = [s for s in handshakes if (s.attributes or {}).get("http.response.status_code") == 101]
    assert len(opened) == sum(status == 101 for status, _ in traced.values()), "every opened connection is traced"
    assert len(handshakes) <= len(HOSTILE_HANDSHAKES)
    for span in telemetry.spans:
        assert "baggage" not in str(dict(span.attributes or {})), "no baggage reaches a span"


# Frames a hostile peer sends once the envelope is agreed: the server's application must get exactly
# codec.decode(frame, text=<its frame type>).payload, and the raw client must get that back from the echo.
HOSTILE_FRAMES: list[str | bytes] = [
    "\x1ewt1\x1elook-alike with an empty envelope",
    "\x1ewt1no terminator",
    "\x1ewt1a=b&a=c\x1erepeated key",
    "\x1ewt1k=%C3%28\x1ebad UTF-8 once decoded",
    "\x1ewt1traceparent=" + TP + "&baggage=k%3D%FF\x1ehostile baggage",
    "\x1ewt1" + "k=" + "v" * 9000 + "\x1eheader over the cap",
    "\x1ewt2a=b\x1efuture version",
    '{"_wstrace":{"traceparent":"' + TP + '"},"op":"json look-alike"}',
    b"\x1ewt\x01\x00",
    b"\x1ewt\x01\xff\xff truncated",
    b"\x1ewt\x01\x00\x03a=bpayload",
    b"\x1ewt\x01\x00\x00" + bytes(range(256)),
    "",
    b"",
]


async def _frame_echoes(url: str) -> list[tuple[Any, Any]]:
    client = await RawClient.connect(url, [(b"wstrace-envelope", b"frame/1"), (b"traceparent", TP.encode())])
    assert client.status == 101 and client.header("wstrace-envelope") == "frame/1"
    results = []
    for frame in HOSTILE_FRAMES:
        # The raw client sends each frame bare: the server must strip at most one envelope.
        await client.send(frame)
        echo = codec.decode(await client.recv()).payload
        expected = codec.decode(frame, text=isinstance(frame, str)).payload  # sent as text if str, else binary
        results.append((echo, expected.encode() if isinstance(expected, str) else expected))
    await client.close_cleanly()
    return results


@pytest.mark.parametrize("server", ["websockets", "aiohttp", "starlette-uvicorn", "tornado"])
def test_hostile_frames_against_every_server(telemetry: Telemetry, server: str) -> None:
    """Look-alike, truncated, oversized and malformed envelopes reach the application with the documented stripping."""
    instrumentors = _servers_instrumented(telemetry)

    async def run() -> list[tuple[Any, Any]]:
        async with SERVERS[server]() as url:
            return await _frame_echoes(url)

    try:
        results = asyncio.run(run())
    finally:
        for instrumentor in instrumentors:
            instrumentor.uninstrument()
    for echo, expected in results:
        assert echo == expected
    receives = [s for s in telemetry.named("receive /matrix")]
    assert len(receives) == len(HOSTILE_FRAMES), "every hostile frame is still traced"


async def _invalid_utf8(url: str) -> tuple[Any, Any]:
    """Send a text frame that is not UTF-8; then check that the server still serves a well-behaved client."""
    client = await RawClient.connect(url, [(b"wstrace-envelope", b"frame/1")])
    assert client.status == 101
    await client.send(b"\x1ewt1\x1e\xff\xfe invalid", opcode=0x1)
    try:
        while True:
            opcode, data = await client.recv_frame(timeout=5)
            if opcode == 0x8:
                outcome: Any = int.from_bytes(data[:2], "big")
                break
    except (asyncio.IncompleteReadError, ConnectionError):
        outcome = "dropped"
    await client.close()
    after = await RawClient.connect(url)
    await after.send("still serving")
    echo = await after.recv()
    await after.close_cleanly()
    return outcome, echo


@pytest.mark.parametrize("server", ["websockets", "aiohttp", "starlette-uvicorn", "tornado"])
def test_invalid_utf8_text_frame_against_every_server(telemetry: Telemetry, server: str) -> None:
    """A text frame that is not UTF-8 ends the connection exactly as without wstrace, and every span ends."""

    async def run() -> tuple[Any, Any]:
        async with SERVERS[server]() as url:
            return await _invalid_utf8(url)

    bare = asyncio.run(run())
    instrumentors = _servers_instrumented(telemetry)
    try:
        traced = asyncio.run(run())
    finally:
        for instrumentor in instrumentors:
            instrumentor.uninstrument()
    assert traced == bare
    assert traced[1] == b"still serving"
    settle(telemetry)
    assert telemetry.open_spans.names() == []
    assert len(telemetry.named("close /matrix")) == 2, "both connections recorded their end"


@pytest.mark.parametrize("client", sorted(CLIENTS))
def test_hostile_frames_against_every_client(telemetry: Telemetry, client: str) -> None:
    """A hostile server's frames reach each instrumented client's application with the documented stripping."""
    frames = [f for f in HOSTILE_FRAMES if f not in ("", b"")]
    instrumentors = [
        WebsocketsInstrumentor(),
        AiohttpInstrumentor(),
        WebsocketClientInstrumentor(),
        TornadoInstrumentor(),
    ]
    for instrumentor in instrumentors:
        instrumentor.instrument(tracer_provider=telemetry.provider, trust="link")

    async def run() -> list[Any]:
        async with RawServer(replies=frames) as url:
            return await CLIENTS[client](url + "/matrix", [str(i) for i in range(len(frames))])

    try:
        replies = asyncio.run(run())
    finally:
        for instrumentor in instrumentors:
            instrumentor.uninstrument()
    expected = [codec.decode(f, text=isinstance(f, str)).payload for f in frames]
    assert replies == expected
