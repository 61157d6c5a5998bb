"""The opening handshake (wstrace._handshake): offer and answer, session id, trust, context sources, URL redaction."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Optional

import pytest
from opentelemetry import baggage, propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators.b3 import B3SingleFormat
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import TextMapPropagator

from tests.conftest import Telemetry
from wstrace import _handshake as hs
from wstrace.config import Config


TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
SPAN_ID = 0xB7AD6B7169203331
TRACEPARENT = f"00-{TRACE_ID:032x}-{SPAN_ID:016x}-01"
OTHER_TRACEPARENT = f"00-{0x1234:032x}-{0x5678:016x}-01"
SESSION = "0123456789abcdef0123456789abcdef"
OTHER_SESSION = "fedcba9876543210fedcba9876543210"


def _span_context(ctx: Optional[Context]) -> Optional[trace.SpanContext]:
    if ctx is None:
        return None
    found = trace.get_current_span(ctx).get_span_context()
    return found if found.is_valid else None


def _trace_id(ctx: Optional[Context]) -> Optional[int]:
    found = _span_context(ctx)
    return found.trace_id if found is not None else None


# Session ids and the envelope offer ------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (SESSION, SESSION),
        (SESSION.upper(), None),  # lowercase only
        (SESSION[:-1], None),
        (SESSION + "0", None),
        (SESSION + "\n", None),  # no trailing newline sneaks through
        ("g" * 32, None),
        ("", None),
        (None, None),
    ],
)
def test_session_or_none(value: Optional[str], expected: Optional[str]) -> None:
    assert hs.session_or_none(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("frame/1", "frame"),
        ("json/1", "json"),
        ("  JSON/1 ", "json"),
        ("frame/2", None),  # an unknown version is refused, not guessed
        ("frame", None),
        ("xml/1", None),
        ("", None),
        (None, None),
        ("\tFrame/1 ", "frame"),  # SP and HT around it, any case: the same offer
        ("frame/1, json/1", None),  # a list is not an offer
        ("frame/1,frame/1", None),  # not even of one format
        ("frame/1,", None),
        (",frame/1", None),
        ("frame /1", None),  # nothing is trimmed inside
        ("frame/01", None),
        ("frame/1.0", None),
        ("frame/1\n", None),  # only SP and HT are blanks
        ("\u00a0frame/1", None),
        ("\x0bjson/1", None),
    ],
)
def test_parse_offer(value: Optional[str], expected: Optional[str]) -> None:
    assert hs.parse_offer(value) == expected


def test_offer_header_round_trips() -> None:
    for fmt in ("frame", "json"):
        assert hs.parse_offer(hs.offer_header(fmt)) == fmt  # type: ignore[arg-type]
    assert hs.offer_header("frame") == "frame/1"


# Header pairs ----------------------------------------------------------------------------------


class RawHeaders:
    """Like websockets' Headers: a mapping view that loses repeats, raw_items() that keeps them."""

    def __init__(self, *pairs: tuple[str, str]) -> None:
        self.pairs = pairs

    def raw_items(self) -> Iterator[tuple[str, str]]:
        return iter(self.pairs)

    def items(self) -> Any:  # pragma: no cover - must not be used
        raise AssertionError("raw_items() is preferred")


def test_header_pairs_from_lists_mappings_and_raw_items() -> None:
    assert hs.header_pairs([("Traceparent", "x"), (b"Wstrace-Session", b"abc")]) == [
        ("traceparent", "x"),
        ("wstrace-session", "abc"),
    ]
    assert hs.header_pairs({"X-A": "1", "x-b": "2"}) == [("x-a", "1"), ("x-b", "2")]
    assert hs.header_pairs(RawHeaders(("Baggage", "a=1"), ("Baggage", "b=2"))) == [
        ("baggage", "a=1"),
        ("baggage", "b=2"),
    ]
    # Non-ASCII bytes decode as latin-1, as HTTP header bytes are.
    assert hs.header_pairs([(bytearray(b"X-Name"), b"caf\xe9")]) == [("x-name", "café")]


def test_header_pairs_never_raises_on_odd_items_and_skips_them() -> None:
    odd: list[Any] = [
        (memoryview(b"x-view"), "1"),  # a memoryview name
        (42, "1"),  # an int name
        ("x-int-value", 7),  # an int value
        ("a", "b", "c"),  # a tuple of the wrong length
        ("only-name",),
        (),
        None,
        42,
        ("traceparent", TRACEPARENT),  # the one readable header
        (None, None),
    ]
    assert hs.header_pairs(odd) == [("traceparent", TRACEPARENT)]
    assert hs.header_pairs({1: "x", "ok": "y", "bad": None}) == [("ok", "y")]  # type: ignore[dict-item]
    assert hs.header_pairs([]) == []
    assert hs.header_pairs(()) == []


def test_a_server_reads_the_readable_headers_among_odd_ones() -> None:
    headers: list[Any] = [(1, 2), ("wstrace-session", SESSION), ("x",), ("traceparent", TRACEPARENT), b"junk"]
    request = hs.read_request(Config.load(), headers, "", ())
    assert request.session_id == SESSION
    assert _trace_id(request.context) == TRACE_ID


# URLs ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("ws://example.com/chat?token=secret", "ws://example.com/chat"),
        ("wss://user:pw@example.com:8443/chat?x=1&y=2", "wss://example.com:8443/chat"),
        ("wss://user@example.com/chat", "wss://example.com/chat"),
        ("ws://user:pw@example.com?token=x", "ws://example.com"),
        ("ws://example.com/chat", "ws://example.com/chat"),
        ("ws://example.com/users/a@b", "ws://example.com/users/a@b"),  # an @ in the path is not a credential
        ("ws://example.com/?next=http://u:p@evil/", "ws://example.com/"),
        ("/chat?token=x", "/chat"),
        ("", ""),
    ],
)
def test_strip_query_drops_query_and_credentials(url: str, expected: str) -> None:
    assert hs.strip_query(url) == expected


def test_strip_query_drops_a_password_holding_an_at_sign() -> None:
    recorded = hs.strip_query("wss://user:p@ss@example.com/chat")
    assert "ss" not in recorded.split("//", 1)[1].split("/", 1)[0]
    assert recorded == "wss://example.com/chat"


def test_client_attributes_record_the_url_without_query_and_credentials() -> None:
    attributes = hs.client_attributes(
        "wss://u:pw@example.com:8443/chat?token=secret", "wss", "example.com", 8443, SESSION
    )
    assert attributes == {
        "http.request.method": "GET",
        "url.full": "wss://example.com:8443/chat",
        "url.scheme": "wss",
        "server.address": "example.com",
        "server.port": 8443,
        "websocket.session.id": SESSION,
    }
    bare = hs.client_attributes("ws://h/", "ws", None, None, SESSION)
    assert "server.address" not in bare and "server.port" not in bare


def test_server_attributes_record_set_addresses_and_the_context_source() -> None:
    attributes = hs.server_attributes(
        "GET",
        "/chat",
        "ws",
        "/chat",
        SESSION,
        "query",
        (("server.address", "0.0.0.0"), ("server.port", 8765), ("client.address", None), ("client.port", 0)),
    )
    assert attributes == {
        "http.request.method": "GET",
        "url.path": "/chat",
        "url.scheme": "ws",
        "http.route": "/chat",
        "websocket.session.id": SESSION,
        "server.address": "0.0.0.0",
        "server.port": 8765,
        "wstrace.context.source": "query",
    }
    assert "wstrace.context.source" not in hs.server_attributes("GET", "/", "ws", "/", SESSION, None, ())


# Extracting a peer's context under each trust policy ---------------------------------------------


CARRIER = {"traceparent": TRACEPARENT, "baggage": "user=alice"}


def test_trust_parent_keeps_the_peers_baggage() -> None:
    ctx = hs.extract(Config.load(trust="parent"), dict(CARRIER))
    assert _trace_id(ctx) == TRACE_ID
    assert baggage.get_all(ctx) == {"user": "alice"}


@pytest.mark.parametrize("trust", ["link", "ignore"])
def test_trust_link_and_ignore_drop_the_peers_baggage(trust: str) -> None:
    carrier = dict(CARRIER)
    ctx = hs.extract(Config.load(trust=trust), carrier)
    assert _trace_id(ctx) == TRACE_ID
    assert baggage.get_all(ctx) == {}
    assert carrier == CARRIER  # the caller's carrier is not changed


class Exploding(TextMapPropagator):
    def extract(self, carrier: Any, context: Any = None, getter: Any = None) -> Context:
        raise RuntimeError("propagator bug")

    def inject(self, carrier: Any, context: Any = None, setter: Any = None) -> None:
        raise RuntimeError("propagator bug")

    @property
    def fields(self) -> set[str]:
        return {"traceparent"}


def test_a_lone_surrogate_in_baggage_keeps_the_trace_context() -> None:
    # The W3C baggage propagator raises on it (aiohttp decodes obs-text header bytes so).
    ctx = hs.extract(Config.load(trust="parent"), {"traceparent": TRACEPARENT, "baggage": "k=\udc80"})
    assert _trace_id(ctx) == TRACE_ID
    assert baggage.get_all(ctx) == {}


def test_a_propagator_that_always_fails_gives_no_context() -> None:
    propagate.set_global_textmap(Exploding())
    assert hs.extract(Config.load(), {"traceparent": TRACEPARENT}) is None
    assert hs.extract(Config.load(), dict(CARRIER)) is None  # the retry without baggage fails too


def test_remote_gives_the_senders_context_and_span_context() -> None:
    config = Config.load()
    ctx, span_context = hs.remote(config, {"traceparent": TRACEPARENT})
    assert span_context is not None and span_context.trace_id == TRACE_ID and span_context.is_remote
    assert _trace_id(ctx) == TRACE_ID
    assert hs.remote(config, None) == (None, None)
    assert hs.remote(config, {}) == (None, None)
    ctx, span_context = hs.remote(config, {"traceparent": "00-garbage"})
    assert span_context is None
    assert hs.remote(Config.load(trust="ignore"), {"traceparent": TRACEPARENT}) == (None, None)


def test_remote_under_link_keeps_no_baggage() -> None:
    ctx, span_context = hs.remote(Config.load(trust="link"), dict(CARRIER))
    assert span_context is not None and span_context.span_id == SPAN_ID
    assert baggage.get_all(ctx) == {}


# Handshake sources -----------------------------------------------------------------------------


ALL_SOURCES = ("headers", "query", "subprotocol")


def test_the_first_configured_source_holding_a_context_wins() -> None:
    config = Config.load(handshake_sources=ALL_SOURCES)
    headers = [("traceparent", TRACEPARENT)]
    query = f"traceparent={OTHER_TRACEPARENT}"
    ctx, source = hs.extract_handshake(config, headers, query, ())
    assert (source, _trace_id(ctx)) == ("headers", TRACE_ID)
    ctx, source = hs.extract_handshake(Config.load(handshake_sources=("query", "headers")), headers, query, ())
    assert (source, _trace_id(ctx)) == ("query", 0x1234)


def test_a_source_without_a_valid_context_is_skipped() -> None:
    config = Config.load(handshake_sources=ALL_SOURCES)
    ctx, source = hs.extract_handshake(
        config, [("traceparent", "00-not-valid")], "other=1", ["chat.v1", f"wstrace.tp.{TRACEPARENT}"]
    )
    assert (source, _trace_id(ctx)) == ("subprotocol", TRACE_ID)


def test_sources_not_configured_are_not_read() -> None:
    ctx, source = hs.extract_handshake(Config.load(), [], f"traceparent={TRACEPARENT}", [f"wstrace.tp.{TRACEPARENT}"])
    assert (ctx, source) == (None, None)


def test_trust_ignore_reads_no_source() -> None:
    config = Config.load(trust="ignore", handshake_sources=ALL_SOURCES)
    assert hs.extract_handshake(config, [("traceparent", TRACEPARENT)], "", ()) == (None, None)


def test_the_configured_propagator_is_used() -> None:
    propagate.set_global_textmap(B3SingleFormat())
    b3 = f"{TRACE_ID:032x}-{SPAN_ID:016x}-1"
    ctx, source = hs.extract_handshake(Config.load(), [("b3", b3), ("traceparent", OTHER_TRACEPARENT)], "", ())
    assert (source, _trace_id(ctx)) == ("headers", TRACE_ID)


# Trust: parent, link or ignore the handshake context ------------------------------------------------


def test_apply_trust() -> None:
    peer = hs.extract(Config.load(), dict(CARRIER))
    ambient = Context()
    assert hs.apply_trust(Config.load(trust="parent"), peer, ambient) == (peer, ())
    parent, links = hs.apply_trust(Config.load(trust="link"), peer, ambient)
    assert parent is ambient
    [found] = links
    assert found.context.trace_id == TRACE_ID and found.context.span_id == SPAN_ID
    assert dict(found.attributes or {}) == {"wstrace.link.kind": "remote"}
    assert hs.apply_trust(Config.load(trust="link"), None, ambient) == (ambient, ())
    assert hs.apply_trust(Config.load(trust="link"), Context(), ambient) == (ambient, ())  # nothing to link to


@pytest.mark.parametrize("trust", ["parent", "link", "ignore"])
def test_a_server_handshake_span_under_each_trust_policy(telemetry: Telemetry, trust: str) -> None:
    config = Config.load(trust=trust)
    request = hs.read_request(config, [("traceparent", TRACEPARENT), ("baggage", "user=alice")], "", ())
    parent, links = hs.apply_trust(config, request.context, Context())
    with trace.use_span(
        telemetry.provider.get_tracer("t").start_span("GET /chat", parent, links=links), end_on_exit=True
    ):
        pass
    span = telemetry.one("GET /chat")
    parented = span.parent is not None and span.parent.trace_id == TRACE_ID
    linked = [link.context.span_id for link in span.links]
    assert parented is (trust == "parent")
    assert linked == ([SPAN_ID] if trust == "link" else [])
    if trust == "parent":
        assert baggage.get_all(parent) == {"user": "alice"}
    else:
        assert baggage.get_all(parent) == {}
        assert span.context.trace_id != TRACE_ID


# What a client sends, what a server reads --------------------------------------------------------


def test_request_headers_carry_context_offer_and_session(telemetry: Telemetry) -> None:
    span = telemetry.provider.get_tracer("t").start_span("GET /chat")
    headers = hs.request_headers(Config.load(envelope_format="json"), span, SESSION)
    span.end()
    assert headers["wstrace-envelope"] == "json/1"
    assert headers["wstrace-session"] == SESSION
    sent = span.get_span_context()
    assert headers["traceparent"].startswith(f"00-{sent.trace_id:032x}-{sent.span_id:016x}-")


def test_request_headers_without_a_span_or_an_envelope() -> None:
    assert hs.request_headers(Config.load(envelope="off"), None, SESSION) == {"wstrace-session": SESSION}
    assert hs.request_headers(Config.load(envelope="always"), None, SESSION) == {
        "wstrace-envelope": "frame/1",
        "wstrace-session": SESSION,
    }


def test_a_propagator_that_cannot_inject_does_not_cost_the_offer(telemetry: Telemetry) -> None:
    propagate.set_global_textmap(CompositePropagator([Exploding()]))
    span = telemetry.provider.get_tracer("t").start_span("GET /chat")
    headers = hs.request_headers(Config.load(), span, SESSION)
    span.end()
    assert headers == {"wstrace-envelope": "frame/1", "wstrace-session": SESSION}


@pytest.mark.parametrize("envelope", ["off", "negotiate", "always"])
def test_read_request_under_every_envelope_mode(envelope: str) -> None:
    config = Config.load(envelope=envelope)
    headers = [("Wstrace-Envelope", "json/1"), ("Wstrace-Session", SESSION), ("Traceparent", TRACEPARENT)]
    request = hs.read_request(config, headers, "", ())
    # The offer is read whatever the mode: the answer (and whether the envelope is in force) is decided later.
    assert request == hs.Request("json", SESSION, request.context, "headers", True)
    assert _trace_id(request.context) == TRACE_ID


def test_read_request_refuses_malformed_offers_and_sessions() -> None:
    request = hs.read_request(
        Config.load(), {"wstrace-envelope": "frame/9", "wstrace-session": "not-a-session"}, "", ()
    )
    assert request == hs.Request(None, None, None, None, True)  # malformed, yet an instrumented client


@pytest.mark.parametrize(
    "headers",
    [
        [("wstrace-envelope", "frame/1"), ("wstrace-envelope", "frame/1")],
        [("wstrace-envelope", "frame/1"), ("Wstrace-Envelope", "json/1")],
        [("wstrace-envelope", "xml/1"), ("wstrace-envelope", "frame/1")],
        RawHeaders(("wstrace-envelope", "json/1"), ("wstrace-envelope", "json/1")),
        {"wstrace-envelope": "frame/1, json/1"},  # how a mapping that joins repeated lines shows them
    ],
    ids=["same-twice", "two-formats", "bad-then-good", "raw-items", "joined"],
)
def test_two_offers_are_no_offer(headers: Any) -> None:
    """Several ``wstrace-envelope`` lines are one list (RFC 9110, 5.3), and a list is no offer: no answer, plain."""
    request = hs.read_request(Config.load(), headers, "", ())
    assert request.offer is None
    assert request.instrumented
    assert hs.read_response(Config.load(), headers) == (None, None)
    assert hs.read_response(Config.load(envelope="always", envelope_format="json"), headers) == ("json", None)


def test_read_request_under_trust_ignore_takes_no_session_and_no_context() -> None:
    headers = [("wstrace-envelope", "frame/1"), ("wstrace-session", SESSION), ("traceparent", TRACEPARENT)]
    assert hs.read_request(Config.load(trust="ignore"), headers, "", ()) == hs.Request("frame", None, None, None, True)


def test_read_request_from_a_browsers_query_and_subprotocol() -> None:
    config = Config.load(handshake_sources=("headers", "query", "subprotocol"))
    request = hs.read_request(config, {}, f"token=x&traceparent={TRACEPARENT}", ())
    assert (request.source, _trace_id(request.context)) == ("query", TRACE_ID)
    request = hs.read_request(config, {}, "", [f"wstrace.tp.{TRACEPARENT}"])
    assert (request.source, _trace_id(request.context)) == ("subprotocol", TRACE_ID)


def test_a_browsers_session_id_travels_with_its_context() -> None:
    """A browser cannot send the ``wstrace-session`` header: the query string or a ``wstrace.sid.`` token carries
    it, read from the configured handshake sources in their order; malformed ids are refused."""
    query = f"traceparent={TRACEPARENT}&wstrace-session={SESSION}"
    token = f"wstrace.sid.{OTHER_SESSION}"
    both = Config.load(handshake_sources=("headers", "query", "subprotocol"))
    assert hs.browser_session(both, query, [token]) == SESSION
    reversed_sources = Config.load(handshake_sources=("subprotocol", "query"))
    assert hs.browser_session(reversed_sources, query, [token]) == OTHER_SESSION
    assert hs.browser_session(both, "wstrace-session=XYZ", ["wstrace.sid.nothex"]) is None
    assert hs.browser_session(both, "wstrace-session=XYZ", [token]) == OTHER_SESSION
    assert hs.browser_session(Config.load(), query, [token]) is None  # sources not configured
    ignore = Config.load(trust="ignore", handshake_sources=("query", "subprotocol"))
    assert hs.browser_session(ignore, query, [token]) is None
    request = hs.read_request(both, {}, query, ())
    assert (request.session_id, request.instrumented) == (None, False), "read_request reads headers only"


@pytest.mark.parametrize(
    ("envelope", "envelope_format", "answer", "expected"),
    [
        ("negotiate", "frame", "frame/1", "frame"),
        ("negotiate", "frame", "json/1", "json"),  # the answer decides the format
        ("negotiate", "frame", None, None),  # no answer: no envelope
        ("negotiate", "frame", "frame/7", None),
        ("off", "frame", "frame/1", None),  # off: never, whatever the peer says
        ("off", "frame", None, None),
        ("always", "frame", None, "frame"),  # forced on, even with no answer
        ("always", "json", None, "json"),
        ("always", "frame", "json/1", "json"),
        ("always", "json", "bogus", "json"),
    ],
)
def test_read_response_under_every_envelope_mode(
    envelope: str, envelope_format: str, answer: Optional[str], expected: Optional[str]
) -> None:
    config = Config.load(envelope=envelope, envelope_format=envelope_format)
    headers = [("Wstrace-Session", SESSION)]
    if answer is not None:
        headers.append(("Wstrace-Envelope", answer))
    assert hs.read_response(config, headers) == (expected, SESSION)


def test_read_response_ignores_a_malformed_session_and_odd_headers() -> None:
    headers: list[Any] = [(7, "x"), ("wstrace-session", "ZZ"), ("wstrace-envelope", "frame/1", "extra")]
    assert hs.read_response(Config.load(), headers) == (None, None)
    assert hs.read_response(Config.load(), RawHeaders(("wstrace-envelope", "frame/1"))) == ("frame", None)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("example.com:8080", ("example.com", 8080)),
        ("example.com", ("example.com", None)),
        ("[::1]:9000", ("::1", 9000)),
        ("example.com:notaport", (None, None)),
        ("", (None, None)),
        (None, (None, None)),
        (b"example.com", (None, None)),
    ],
)
def test_host_and_port_from_a_host_header(host: object, expected: tuple[object, object]) -> None:
    assert hs.host_and_port(host) == expected
