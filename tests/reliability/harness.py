"""Property checks over everything that parses peer input, shared by hypothesis, the corpus and atheris.

One fuzz input is a ``bytes``: its first byte picks a target, the rest is the target's input (text
targets read it as UTF-8 with ``surrogateescape``, so invalid UTF-8 becomes lone surrogates). A check
raises ``AssertionError`` when a property breaks and lets any other exception escape: the instrumented
path must never raise, so an escaping exception is a finding too.

The properties, for every target:

* decoding never raises;
* a frame comes back unchanged (the same object) or with exactly the documented stripping
  (``docs/protocol.md`` sections 5, 6 and 8): the removed part is one well-formed envelope and the rest
  is untouched;
* a payload sent through a pair of ``ConnectionTracer`` s comes back equal, whatever it looks like;
* incoming context never puts peer text into a span: every attribute key is one wstrace documents and
  every string value has a known shape;
* the Redis carrier loses nothing: an entry or value without a valid envelope is returned as it was;
* a Socket.IO event's arguments come back as they were (the same object) unless they end with exactly one
  well-formed carrier, which alone is removed (``docs/protocol.md`` section 13); offers, pub/sub carriers and
  engine.io queries of any shape never raise.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from typing import Any

from opentelemetry import baggage, context as otel_context
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.routes import ROUTES_ENV
from wstrace import envelope as codec, propagation
from wstrace.carriers import headers_carrier, query_carrier, split_subprotocols
from wstrace.config import Config
from wstrace.connection import ConnectionTracer
from wstrace.instrumentation._instrumentor import Settings, engineio_request
from wstrace.instrumentation.channels._layers import KEY as CHANNELS_KEY, Layers, parse as channels_parse
from wstrace.instrumentation.socketio import _common as sio_common, _manager as sio_manager
from wstrace.redis import RedisHop, decode_entry, decode_value
from wstrace.semconv import TOKEN_PREFIXES


__all__ = ["TARGETS", "check", "input_for", "span_attributes_are_ours"]

CAP = codec.DEFAULT_MAX_HEADER_BYTES
# The header grammar of docs/protocol.md, section 7, written out again here.
_ITEM = r"[a-z0-9][a-z0-9_.\-]*=(?:[A-Za-z0-9_.~\-]|%[0-9A-Fa-f]{2})*"
_HEADER = rf"(?:{_ITEM}(?:&{_ITEM})*)?"
HEADER_CHARS = re.compile(_HEADER + r"\Z")
KEY = re.compile(r"[a-z0-9][a-z0-9_.\-]*\Z")
TEXT_PREFIX = re.compile(rf"\x1ewt1{_HEADER}\x1e\Z")
TEXT_PREFIX_B = re.compile(rf"\x1ewt1{_HEADER}\x1e\Z".encode())
JSON_BLANKS = " \t\n\r"

_exporter = InMemorySpanExporter()
_provider = TracerProvider()
_provider.add_span_processor(SimpleSpanProcessor(_exporter))
_tracer = _provider.get_tracer("fuzz")

# Every attribute wstrace may put on a span, with the shape of its value. Peer-controlled text
# (baggage, tracestate, header junk) has no way in: a key outside this table, or a value of
# another shape, fails the check.
_HEX32 = re.compile(r"[0-9a-f]{32}\Z")
ATTRIBUTE_SHAPES: dict[str, Callable[[Any], bool]] = {
    "http.request.method": lambda v: v == "GET",
    "http.response.status_code": lambda v: isinstance(v, int),
    "http.route": lambda v: v == "/chat",
    "url.path": lambda v: v == "/chat",
    "url.full": lambda v: v == "ws://example.test:8080/chat",
    "url.scheme": lambda v: v == "ws",
    "server.address": lambda v: v == "example.test",
    "server.port": lambda v: v == 8080,
    "network.protocol.name": lambda v: v == "websocket",
    "websocket.session.id": lambda v: bool(_HEX32.match(str(v))),
    "websocket.envelope": lambda v: v in ("frame", "json", "none"),
    "websocket.message.type": lambda v: v in ("text", "binary"),
    "websocket.message.ordinal": lambda v: isinstance(v, int),
    "messaging.message.body.size": lambda v: isinstance(v, int),
    "wstrace.context.source": lambda v: v in ("headers", "query", "subprotocol"),
    "websocket.close.code": lambda v: isinstance(v, int),
    "websocket.close.initiator": lambda v: v in ("local", "remote", "none"),
    "error.type": lambda v: isinstance(v, str) and v.replace(" ", "").replace(".", "").isalnum(),
}


def span_attributes_are_ours(spans: list[ReadableSpan]) -> None:
    """Every attribute of every span (and of its events and links) is one of wstrace's, of its shape."""
    for span in spans:
        assert span.name in ("GET /chat", "send /chat", "receive /chat", "close /chat"), span.name
        groups = [span.attributes or {}]
        groups += [e.attributes or {} for e in span.events]
        groups += [
            {k: v for k, v in (link.attributes or {}).items() if k != "wstrace.link.kind"} for link in span.links
        ]
        for attributes in groups:
            for key, value in attributes.items():
                shape = ATTRIBUTE_SHAPES.get(key)
                assert shape is not None, f"unexpected attribute {key}={value!r} on {span.name}"
                assert shape(value), f"{key}={value!r} on {span.name}"


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def input_for(target: str, raw: bytes) -> bytes:
    """The fuzz input that runs ``raw`` through ``target`` (for corpus files and hypothesis)."""
    return bytes([list(TARGETS).index(target)]) + raw


# Stripping ---------------------------------------------------------------------------------------


def assert_frame_stripping(wire: str | bytes, payload: str | bytes, carrier: dict[str, str] | None, cap: int) -> None:
    """``payload`` is ``wire`` itself, or ``wire`` minus exactly one well-formed envelope prefix."""
    if carrier is None:
        assert payload is wire, "a frame that is no envelope must come back as the very same object"
        return
    cut = len(wire) - len(payload)
    assert cut > 0 and wire[cut:] == payload, "only a prefix may be removed"
    prefix = wire[:cut]
    if isinstance(prefix, str):
        assert TEXT_PREFIX.match(prefix) and cut - 5 <= cap, f"removed {prefix!r}"
    elif prefix.startswith(codec.BINARY_MAGIC):
        size = int.from_bytes(prefix[4:6], "big")
        assert cut == 6 + size and size <= cap and HEADER_CHARS.match(prefix[6:].decode("ascii")), prefix
    else:
        assert TEXT_PREFIX_B.match(prefix) and cut - 5 <= cap, f"removed {prefix!r}"
    assert all(KEY.match(k) and isinstance(v, str) for k, v in carrier.items())


def assert_json_stripping(
    wire: str | bytes, payload: str | bytes, carrier: dict[str, str] | None, field: str, cap: int
) -> None:
    """``payload`` is ``wire``, or ``wire`` minus exactly its first member ``"<field>":{…}`` (and its comma)."""
    if carrier is None:
        assert payload is wire
        return
    blanks = JSON_BLANKS if isinstance(wire, str) else JSON_BLANKS.encode()
    start = len(wire) - len(wire.lstrip(blanks))  # type: ignore[arg-type]
    assert wire[start : start + 1] in ("{", b"{")
    removed_len = len(wire) - len(payload)
    removed = wire[start + 1 : start + 1 + removed_len]
    assert wire[: start + 1] + wire[start + 1 + removed_len :] == payload, "only the member may be removed"
    key = json.dumps(field) + ":"
    key_t: str | bytes = key if isinstance(wire, str) else key.encode()
    assert removed.startswith(key_t)  # type: ignore[arg-type]
    obj = removed[len(key_t) :]
    if obj[-1:] in (",", b","):
        obj = obj[:-1]
    else:
        rest = wire[start + 1 + removed_len :].lstrip(blanks)  # type: ignore[arg-type]
        assert rest[:1] in ("}", b"}"), "a member without a comma must be the object's only one"
    assert len(obj) <= cap
    assert json.loads(obj) == carrier
    assert all(KEY.match(k) and isinstance(v, str) for k, v in carrier.items())


# Targets ------------------------------------------------------------------------------------------


def _decode_text(raw: bytes) -> None:
    wire = _text(raw)
    for cap in (0, 16, CAP):
        decoded = codec.decode(wire, max_header=cap)
        assert_frame_stripping(wire, decoded.payload, decoded.carrier, cap)


def _decode_bytes(raw: bytes) -> None:
    for cap in (0, 16, CAP):
        for text in (None, True, False):
            decoded = codec.decode(raw, text=text, max_header=cap)
            assert_frame_stripping(raw, decoded.payload, decoded.carrier, cap)
            if text is False:
                assert not raw.startswith(codec.TEXT_MAGIC.encode()) or decoded.carrier is None
            elif text:
                assert not raw.startswith(codec.BINARY_MAGIC) or decoded.carrier is None


def _decode_json(raw: bytes) -> None:
    for wire in (_text(raw), raw):
        for field in ("_wstrace", "t"):
            decoded = codec.decode_json_field(wire, field=field, max_header=CAP)
            assert_json_stripping(wire, decoded.payload, decoded.carrier, field, CAP)


def _pair(fmt: str, trust: str = "parent") -> tuple[ConnectionTracer, ConnectionTracer]:
    """A client and a server tracer that negotiated the envelope in ``fmt``, in memory."""
    config = Config.load({"WSTRACE_ROUTES": ROUTES_ENV}, envelope_format=fmt, trust=trust)
    client = ConnectionTracer.client(
        _tracer, config, url="ws://example.test:8080/chat", scheme="ws", host="example.test", port=8080, path="/chat"
    )
    server = ConnectionTracer.server(_tracer, config, path="/chat", headers=client.request_headers())
    response = server.response_headers()
    server.opened(response_headers=response)
    client.opened(response_headers=response)
    assert client.envelope == server.envelope == fmt
    return client, server


def _received(raw: bytes) -> None:
    """A frame from a hostile peer, on negotiated connections of both formats, as text and as binary."""
    for fmt in ("frame", "json"):
        _, server = _pair(fmt)
        for wire, text in ((_text(raw), True), (raw, False), (raw, True)):
            payload = server.received(wire, text=text)
            server.receive_done()
            if fmt == "frame":
                decoded = codec.decode(wire, text=text)  # only the frame type's own layout is an envelope
                assert_frame_stripping(wire, payload, decoded.carrier, CAP)
            else:
                decoded = codec.decode_json_field(wire)
                assert_json_stripping(wire, payload, decoded.carrier, "_wstrace", CAP)
        server.closed(code=1000, initiator="remote")


def _round_trip(raw: bytes) -> None:
    """Whatever the application sends, in either format and direction, the other application receives."""
    text = _text(raw)

    def exchange(client: ConnectionTracer, server: ConnectionTracer) -> None:
        for payload, is_text in ((text, True), (raw, False), (raw, True)):
            for sender, receiver in ((client, server), (server, client)):
                wire, handle = sender.send_start(payload, text=is_text)
                sender.send_end(handle)
                assert receiver.received(wire, text=is_text) == payload
                receiver.receive_done()

    # Baggage from the input too, which a propagator may be unable to write: current first at the
    # sends only, then at the handshake as well. It may cost the context, never the payload.
    pairs = [_pair(fmt) for fmt in ("frame", "json")]
    token = otel_context.attach(baggage.set_baggage("k", text[:64]))
    try:
        for client, server in pairs:
            exchange(client, server)
        for fmt in ("frame", "json"):
            exchange(*_pair(fmt))
    finally:
        otel_context.detach(token)


def _headers(raw: bytes) -> list[tuple[str, str]]:
    pairs = []
    names = ("traceparent", "tracestate", "baggage", "wstrace-session", "wstrace-envelope", "b3")
    for i, line in enumerate(raw.split(b"\n")):
        name, sep, value = line.partition(b":")
        # A line with no colon is a value for a known name, so short inputs still hit real fields.
        key = name.decode("latin-1") if sep else names[i % len(names)]
        pairs.append((key, (value if sep else line).decode("latin-1")))
    return pairs


def _handshake(raw: bytes) -> None:
    """An upgrade request whose headers, query and subprotocols come from the input, under every trust."""
    headers = _headers(raw)
    query = _text(raw)
    offered = _text(raw).split(",")
    fields = propagation.fields()
    carrier = headers_carrier(headers, fields)
    assert set(carrier) <= fields and all(len(v) <= 8192 for v in carrier.values())
    for trust in ("parent", "link", "ignore"):
        _exporter.clear()
        config = Config.load({"WSTRACE_ROUTES": ROUTES_ENV}, trust=trust, handshake_sources="headers,query,subprotocol")
        server = ConnectionTracer.server(
            _tracer, config, path="/chat", query=query, headers=headers, subprotocols=offered
        )
        server.opened(response_headers=server.response_headers())
        assert _HEX32.match(server.session_id)
        for payload in ("x", b"y"):
            assert server.received(payload) == payload
            server.receive_done()
        server.closed(initiator=None)
        span_attributes_are_ours(list(_exporter.get_finished_spans()))


def _query(raw: bytes) -> None:
    for query in (_text(raw), raw):
        fields = propagation.fields()
        carrier = query_carrier(query, fields)
        assert set(carrier) <= fields and all(len(v) <= 8192 for v in carrier.values())


def _subprotocols(raw: bytes) -> None:
    offered = _text(raw).split(",")
    carrier, rest = split_subprotocols(offered)
    assert rest == [t for t in offered if not t.startswith(TOKEN_PREFIXES)], "only our tokens are removed"
    assert set(carrier) <= {"traceparent"} and all(1 <= len(v) <= 128 for v in carrier.values())


_hop = RedisHop(client=None)  # only its decoders are used: they never touch the client


def _redis(raw: bytes) -> None:
    """List items, pub/sub messages and stream entries from a Redis holding anything at all."""
    for value in (raw, _text(raw)):
        carried = decode_value(value, "q")
        decoded = codec.decode(value)
        if decoded.carrier is None:
            assert carried.item is value
        else:
            assert_frame_stripping(value, carried.item, decoded.carrier, CAP)
        message = {"type": "message", "pattern": None, "channel": b"c", "data": value}
        out = _hop._message(message)
        assert out.item is message if decoded.carrier is None else out.item == {**message, "data": carried.item}
        fields = {b"wstrace": value, b"f": b"v"}
        entry = decode_entry(b"s", b"1-0", fields)
        stripped = decoded.carrier is not None and decoded.payload in ("", b"")
        assert entry.item.fields == ({b"f": b"v"} if stripped else fields)
        if not stripped:
            assert entry.item.fields is fields
    # Replies of any shape (as JSON, if the input is some): never an error, never a lost reply.
    try:
        shape = json.loads(raw)
    except (ValueError, RecursionError):
        return
    entries = _hop._entries(shape, None)
    assert isinstance(entries, list)
    popped = _hop._popped(shape)
    assert popped is None if shape is None else popped is not None


_SIO_SETTINGS = Settings.make(Config.load(environ={}), TracerProvider())


def _socketio(raw: bytes) -> None:
    """A Socket.IO event's arguments (the input as JSON), an engine.io request's query and offer header, and a
    pub/sub message's carrier, all from a peer holding anything at all."""
    text = _text(raw)
    assert isinstance(sio_common.offered({"QUERY_STRING": text, "HTTP_WSTRACE_SOCKETIO": text}), bool)
    assert isinstance(engineio_request(text), bool) and isinstance(engineio_request(raw), bool)
    try:
        shape = json.loads(raw)
    except (ValueError, RecursionError):
        shape = [text, {sio_common.CARRIER_KEY: text}]
    for args in (shape, [shape], ["event", shape], ["event", {sio_common.CARRIER_KEY: shape}]):
        if not isinstance(args, list):
            continue
        rest, carrier = sio_common.split_carrier(args)
        if carrier is None:
            assert rest is args
        else:
            assert list(rest) == args[:-1] and carrier == args[-1][sio_common.CARRIER_KEY]
            assert sio_common.valid_carrier(carrier)
        sio_manager._parent(_SIO_SETTINGS, shape)
        sio_manager._parent(_SIO_SETTINGS, carrier)
    if raw[:1] == b"2":
        spliced = sio_common.splice(text, '{"x":1}')
        assert spliced is None or spliced.startswith(text[:-1])


_channels = Layers(Settings(_tracer, Config()), carrier=True, active=lambda: True)


def _channels_layer(raw: bytes) -> None:
    """A Channels layer event holding anything under the carrier key: delivered exactly as it came unless the
    value is a well-formed carrier, which is removed from a copy; the layer's dict is never changed."""
    values: list[Any] = [_text(raw), raw]
    try:
        values.append(json.loads(raw))
    except (ValueError, RecursionError):
        pass
    for value in values:
        message = {"type": "chat.message", "text": "t", CHANNELS_KEY: value}
        before = copy.deepcopy(message)
        event, processing = _channels.open(message)
        assert processing is not None, "every layer event is handled in a process span"
        processing.finish()
        assert message == before, "the layer's dict was changed"
        if event is message:
            assert channels_parse(value, CAP) is None, "a well-formed carrier was left in the event"
        else:
            assert channels_parse(value, CAP) is not None, "a value that is not our carrier was removed"
            assert event == {"type": "chat.message", "text": "t"}


TARGETS: dict[str, Callable[[bytes], None]] = {
    "decode-text": _decode_text,
    "decode-bytes": _decode_bytes,
    "decode-json": _decode_json,
    "received": _received,
    "round-trip": _round_trip,
    "handshake": _handshake,
    "query": _query,
    "subprotocols": _subprotocols,
    "redis": _redis,
    "socketio": _socketio,
    "channels-layer": _channels_layer,
}
_ORDER = list(TARGETS.values())


def check(data: bytes) -> None:
    """Run one fuzz input through the target its first byte selects."""
    if not data:
        return
    _exporter.clear()
    _ORDER[data[0] % len(_ORDER)](data[1:])
