"""The opening handshake (``wstrace._opening``): spans, negotiation, trust, sources, exclusion, failures."""

from __future__ import annotations

import pytest
from opentelemetry import context as otel_context, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import SpanKind, StatusCode

from tests.conftest import Telemetry
from tests.routes import ROUTES_ENV
from tests.tracers import REMOTE_SPAN, REMOTE_TRACE, TRACEPARENT, Metered, client, connect, handshake, server
from wstrace.config import Config
from wstrace.connection import ConnectionTracer


def test_handshake_propagates_and_records_http_attributes(telemetry: Telemetry) -> None:
    """The server handshake continues the client's, and both carry HTTP attributes and the shared session id."""
    c, s = connect(telemetry)
    client_hs, server_hs = handshake(telemetry, SpanKind.CLIENT), handshake(telemetry, SpanKind.SERVER)
    assert server_hs.parent is not None and server_hs.parent.span_id == client_hs.context.span_id
    assert client_hs.attributes["url.full"] == "ws://example.test:8080/chat", "the query (a token) is not recorded"
    assert server_hs.attributes["http.response.status_code"] == 101
    assert server_hs.attributes["wstrace.context.source"] == "headers"
    assert c.session_id == s.session_id == server_hs.attributes["websocket.session.id"]
    assert c.envelope == s.envelope == "frame"


def test_envelope_not_agreed_when_server_refuses(telemetry: Telemetry) -> None:
    """A server with envelope=off does not answer the offer, and neither end envelopes frames."""
    c, s = connect(telemetry, server_options={"envelope": "off"})
    assert c.envelope is None and s.envelope is None
    wire, handle = c.send_start("plain")
    c.send_end(handle)
    assert wire == "plain"


def test_envelope_forced_with_always(telemetry: Telemetry) -> None:
    """envelope=always on both ends works with no offer (a browser cannot send or read the headers)."""
    c = client(telemetry, envelope="always")
    s = server(telemetry, [], envelope="always")  # the browser sent no wstrace headers
    s.opened(response_headers={})
    c.opened(response_headers={})
    assert c.envelope == s.envelope == "frame"


@pytest.mark.parametrize(
    ("trust", "parented", "linked"),
    [("parent", True, False), ("link", False, True), ("ignore", False, False)],
)
def test_trust_policy_for_the_handshake(telemetry: Telemetry, trust: str, parented: bool, linked: bool) -> None:
    """trust decides whether incoming handshake context becomes the parent, a link, or nothing."""
    s = server(telemetry, [("traceparent", TRACEPARENT)], trust=trust)
    s.opened()
    hs = telemetry.one("GET /chat")
    assert (hs.context.trace_id == REMOTE_TRACE) is parented
    assert any(link.context.span_id == REMOTE_SPAN for link in hs.links) is linked


@pytest.mark.parametrize(
    ("sources", "query", "subprotocols", "expected"),
    [
        ("query", f"traceparent={TRACEPARENT}&x=1", (), "query"),
        ("subprotocol", "", ("chat", f"wstrace.tp.{TRACEPARENT}"), "subprotocol"),
        ("headers", f"traceparent={TRACEPARENT}", (), None),  # not configured: ignored
    ],
)
def test_browser_handshake_sources(
    telemetry: Telemetry, sources: str, query: str, subprotocols: tuple[str, ...], expected: str | None
) -> None:
    """Context in the query string or a subprotocol token is used only when that source is configured."""
    s = server(telemetry, [], handshake_sources=sources, query=query, subprotocols=subprotocols)
    s.opened()
    hs = telemetry.one("GET /chat")
    assert hs.attributes.get("wstrace.context.source") == expected
    assert (hs.context.trace_id == REMOTE_TRACE) is (expected is not None)


def test_a_server_adopts_a_browsers_session_id_unless_the_header_names_one(telemetry: Telemetry) -> None:
    """A browser's ``wstrace-session`` query parameter (or ``wstrace.sid.`` token) names the session; a header wins."""
    tracer = telemetry.provider.get_tracer("test")
    config = Config.load(handshake_sources=("headers", "query"))
    browser = ConnectionTracer.server(tracer, config, path="/", query=f"wstrace-session={'a' * 32}")
    assert browser.session_id == "a" * 32
    assert browser.response_headers() == {}, "a client that sent no wstrace header gets none"
    header = ConnectionTracer.server(
        tracer, config, path="/", query=f"wstrace-session={'a' * 32}", headers={"wstrace-session": "b" * 32}
    )
    assert header.session_id == "b" * 32
    token = ConnectionTracer.server(
        tracer, Config.load(handshake_sources="subprotocol"), path="/", subprotocols=[f"wstrace.sid.{'c' * 32}"]
    )
    assert token.session_id == "c" * 32
    for ct in (browser, header, token):
        ct.handshake_failed(status=400)
    handshakes = [s for s in telemetry.spans if s.name.startswith("GET")]
    assert {(s.attributes or {})["websocket.session.id"] for s in handshakes} == {"a" * 32, "b" * 32, "c" * 32}


def test_failed_handshake(telemetry: Telemetry) -> None:
    """A handshake with no 101 ends with the status; a server 500 and a client error are errors."""
    s = server(telemetry, [])
    s.handshake_failed(status=500)
    c = client(telemetry)
    c.handshake_failed(error=ConnectionRefusedError("refused"))
    server_hs, client_hs = handshake(telemetry, SpanKind.SERVER), handshake(telemetry, SpanKind.CLIENT)
    assert server_hs.status.status_code is StatusCode.ERROR
    assert client_hs.attributes["error.type"] == "ConnectionRefusedError"
    assert s.send_start("late")[0] == "late", "a tracer that never opened still passes payloads through"


def test_server_never_raises_on_headers_it_cannot_read(telemetry: Telemetry) -> None:
    """Header names or values of unexpected types are skipped; the handshake is still traced from the rest."""
    headers = [
        (memoryview(b"x-odd"), b"1"),
        (42, "forty-two"),
        ("traceparent", TRACEPARENT),
        ("just-a-name",),
    ]
    s = server(telemetry, headers)
    s.opened()
    span = handshake(telemetry, SpanKind.SERVER)
    assert span.context.trace_id == REMOTE_TRACE


def test_a_client_that_sent_no_wstrace_header_gets_none(telemetry: Telemetry) -> None:
    """An un-instrumented client sees nothing of wstrace in the 101; an instrumented one gets the answer."""
    bare = server(telemetry, [("host", "example.test")])
    assert bare.response_headers() == {}
    c = client(telemetry)
    traced = server(telemetry, c.request_headers())
    assert set(traced.response_headers()) == {"wstrace-session", "wstrace-envelope"}
    ignoring = server(telemetry, c.request_headers(), trust="ignore")
    assert ignoring.response_headers()["wstrace-session"] != c.session_id  # its own id, still answered


def test_nested_in_another_instrumentations_server_span(telemetry: Telemetry) -> None:
    """Under an outer SERVER span wstrace's handshake is INTERNAL, ignores the headers the outer span continued,
    takes a browser's query context as parent (trust parent) and links the outer span."""
    outer = telemetry.provider.get_tracer("outer").start_span("WS /chat", kind=SpanKind.SERVER)
    token = otel_context.attach(trace.set_span_in_context(outer))
    try:
        config = Config.load({"WSTRACE_ROUTES": ROUTES_ENV}, handshake_sources="headers,query")
        nested = ConnectionTracer.server(
            telemetry.provider.get_tracer("t"),
            config,
            path="/chat",
            headers=[("traceparent", "00-11111111111111111111111111111111-2222222222222222-01")],
            query=f"traceparent={TRACEPARENT}",
            nested_in=outer.get_span_context(),
        )
    finally:
        otel_context.detach(token)
    nested.opened()
    outer.end()
    hs = next(s for s in telemetry.named("GET /chat"))
    assert hs.kind is SpanKind.INTERNAL
    assert hs.context.trace_id == REMOTE_TRACE and hs.attributes["wstrace.context.source"] == "query"
    assert [(lk.attributes or {}).get("wstrace.link.kind") for lk in hs.links] == ["server"]
    assert hs.links[0].context.span_id == outer.get_span_context().span_id
    assert "websocket.session.id" not in (telemetry.one("WS /chat").attributes or {}), "never written on"


@pytest.mark.parametrize("excluded", ["/chat", r"chat\Z"])
def test_an_excluded_url_is_neither_traced_nor_counted(telemetry: Telemetry, excluded: str) -> None:
    metered = Metered(telemetry, excluded_urls=excluded)
    assert metered.client.request_headers() == {} and metered.server.response_headers() == {}
    metered.round_trips(2)
    metered.client.closed(code=1000, initiator="local")
    metered.server.closed(code=1000, initiator="remote")
    assert telemetry.spans == []
    data = metered.reader.get_metrics_data()
    assert not any(
        point.value if hasattr(point, "value") else point.count
        for resource in (data.resource_metrics if data else ())
        for scope in resource.scope_metrics
        for metric in scope.metrics
        for point in metric.data.data_points
    )


def test_excluded_urls_come_from_opentelemetrys_variable_unless_wstraces_is_set() -> None:
    otel = Config.load({"OTEL_PYTHON_EXCLUDED_URLS": "health,metrics"})
    assert otel.excluded_urls is not None and otel.excluded_urls("ws://h/health") and not otel.excluded_urls("/chat")
    ours = Config.load({"OTEL_PYTHON_EXCLUDED_URLS": "health", "WSTRACE_EXCLUDED_URLS": "/internal/"})
    assert ours.excluded_urls is not None and not ours.excluded_urls("/health") and ours.excluded_urls("/internal/x")
    assert Config.load({}, excluded_urls=lambda url: url.endswith("/x")).excluded_urls("/a/x")  # type: ignore[misc]


# Messages sent as fragments ------------------------------------------------------


def test_what_an_opening_tells_the_adapter(telemetry: Telemetry) -> None:
    """The properties adapters read: the format in force, the handshake's context before and after the 101,
    the connection span's context in the ``connection`` model, and whether the handshake was sampled."""
    c = client(telemetry)
    s = server(telemetry, c.request_headers(), model="connection")
    assert s.envelope is None and s.recording
    before = trace.get_current_span(s.handshake_context).get_span_context()
    assert s.handshake_span_context == before
    response = s.response_headers()
    s.opened(response_headers=response)
    c.opened(response_headers=response)
    handshake_client = handshake(telemetry, SpanKind.CLIENT).get_span_context()
    assert s.envelope == c.envelope == "frame"
    after = trace.get_current_span(s.handshake_context).get_span_context()
    assert after == before == handshake(telemetry, SpanKind.SERVER).get_span_context()
    # The span to link to, while it is open and (its context only) once it has ended.
    assert s.handshake_span_context == before and c.handshake_span_context == handshake_client
    connection = s.connection_context
    assert connection is not None and trace.get_current_span(connection).is_recording()
    assert c.connection_context is None  # the message model's default on the client


def test_an_excluded_connection_has_no_handshake_context(telemetry: Telemetry) -> None:
    s = server(telemetry, excluded_urls="/chat")
    assert trace.get_current_span(s.handshake_context) is trace.INVALID_SPAN and not s.recording
    assert s.handshake_span_context is None
    assert s.excluded


def test_only_an_excluded_connection_says_so(telemetry: Telemetry) -> None:
    """``excluded`` is the option's verdict, not "closed": a failed or ended connection was still traced."""
    c, s = client(telemetry), server(telemetry)
    assert not c.excluded and not s.excluded
    s.handshake_failed(status=403)
    c.closed(code=1000, initiator="local")
    assert not c.excluded and not s.excluded
    assert client(telemetry, excluded_urls="/chat").excluded


def test_a_sampled_out_handshake_that_fails_ends_its_span_and_counts(telemetry: Telemetry) -> None:
    """Sampled out: nothing recorded, but the connection is counted by route and side when it opens."""
    provider = TracerProvider(sampler=ALWAYS_OFF)
    metered = Metered(telemetry)
    tracer = provider.get_tracer("t")
    s = ConnectionTracer.server(tracer, Config.load(), path="/x", instruments=metered.instruments)
    assert not s.recording
    s.handshake_failed(status=403)
    s.opened()  # after a failure: nothing more
    routed = ConnectionTracer.server(tracer, Config.load(), path="/x", route="/x", instruments=metered.instruments)
    routed.opened()
    sides = {
        (p.attributes.get("http.route"), p.attributes["websocket.side"])
        for p in metered.points("wstrace.connection.active")
    }
    assert ("/x", "server") in sides  # the sampled-out connection that opened, by its route
    assert all(p.value >= 0 for p in metered.points("wstrace.connection.active"))
