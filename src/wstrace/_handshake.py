"""The opening handshake: what the client offers, what the server answers, and the context it trusts.

Pure functions over headers, query strings and subprotocol lists, with the
trust policy applied where a peer's context comes in. Nothing here keeps
per-connection state.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping, NamedTuple, Optional, Sequence
from urllib.parse import urlsplit

from opentelemetry import context as otel_context, trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanContext, SpanKind

from wstrace import propagation, semconv as sc
from wstrace._log import warn_once
from wstrace._spans import link
from wstrace.carriers import (
    HeaderSource,
    headers_carrier,
    query_carrier,
    query_session,
    split_subprotocols,
    subprotocol_session,
)
from wstrace.config import Config, EnvelopeFormat


__all__ = [
    "Request",
    "ServerStart",
    "apply_trust",
    "browser_session",
    "client_attributes",
    "extract",
    "extract_handshake",
    "header_pairs",
    "host_and_port",
    "offer_header",
    "parse_offer",
    "read_request",
    "read_response",
    "remote",
    "server_attributes",
    "server_start",
    "session_or_none",
    "strip_query",
]

_SESSION_ID = re.compile(r"[0-9a-f]{32}\Z")


def session_or_none(value: Optional[str]) -> Optional[str]:
    """``value`` if it is a well-formed session id (32 lowercase hex digits)."""
    return value if value and _SESSION_ID.match(value) else None


def parse_offer(value: Optional[str]) -> Optional[EnvelopeFormat]:
    """Read a ``wstrace-envelope: <format>/<version>`` header value (an offer or an answer).

    Exactly one ``frame/1`` or ``json/1``, in any case, with optional SP and HT around it
    (docs/protocol.md, section 3); a list (``frame/1, json/1``) is not an offer.
    """
    if not value:
        return None
    fmt, _, version = value.strip(" \t").lower().partition("/")
    if version != sc.ENVELOPE_VERSION or fmt not in ("frame", "json"):
        return None
    return fmt  # type: ignore[return-value]


def _one_offer(values: list[str]) -> Optional[EnvelopeFormat]:
    """The format of a ``wstrace-envelope`` field sent as ``values`` (one per header line).

    Several lines are one comma-separated list (RFC 9110, section 5.3), which is not an offer.
    """
    return parse_offer(values[0]) if len(values) == 1 else None


def offer_header(fmt: EnvelopeFormat) -> str:
    return f"{fmt}/{sc.ENVELOPE_VERSION}"


def header_pairs(headers: HeaderSource) -> list[tuple[str, str]]:
    """Headers as ``(lowercase name, value)`` text pairs; a pair that is not text or bytes is skipped."""
    items: Iterable[Any]
    raw = getattr(headers, "raw_items", None)  # websockets' Headers: every value of a repeated header
    if callable(raw):
        items = raw()
    elif isinstance(headers, Mapping):
        items = headers.items()
    else:
        items = headers
    pairs = []
    for item in items:
        try:
            name, value = item
            pairs.append((_text(name).lower(), _text(value)))
        except (TypeError, ValueError, AttributeError, UnicodeError):
            continue  # a header wstrace cannot read is the library's business, not a reason to fail
    return pairs


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("latin-1")
    raise TypeError(type(value).__name__)


def host_and_port(host: Any) -> tuple[Optional[str], Optional[int]]:
    """The server's address and port from a ``Host`` header's value (``example.com:8080``, ``[::1]``); both
    ``None`` for anything that is not one."""
    if not isinstance(host, str) or not host:
        return None, None
    try:
        parts = urlsplit(f"//{host}")
        return parts.hostname, parts.port
    except ValueError:
        return None, None


def strip_query(url: str) -> str:
    """Drop the query and credentials from a URL before recording it."""
    head, _, _ = url.partition("?")
    scheme, sep, rest = head.partition("://")
    authority, slash, path = rest.partition("/")
    if sep and "@" in authority:
        # The host follows the last "@", as URL parsers read it: a password may hold an "@" of its own.
        rest = authority.rpartition("@")[2] + slash + path
    return f"{scheme}{sep}{rest}"


def extract(config: Config, carrier: dict[str, str]) -> Optional[Context]:
    """The context a peer's carrier holds, or ``None`` if the propagator chokes on it.

    Only ``trust=parent`` uses the peer's baggage, so under ``link`` it is not
    even parsed: a hostile peer's baggage costs nothing, and cannot make the
    propagator log a warning per message.
    """
    if config.trust != "parent" and "baggage" in carrier:
        carrier = _without_baggage(carrier)
    try:
        return propagation.extract(carrier)
    except Exception as exc:
        # The W3C baggage propagator raises on a lone surrogate (aiohttp decodes
        # obs-text header bytes so): keep the trace context, drop the baggage.
        warn_once("extracting a peer's context", exc)
    if "baggage" in carrier:
        try:
            return propagation.extract(_without_baggage(carrier))
        except Exception:
            pass
    return None


def remote(config: Config, carrier: Optional[dict[str, str]]) -> tuple[Optional[Context], Optional[trace.SpanContext]]:
    """A message's sender context and its span context, unless there is none or trust is ``ignore``."""
    ctx = extract(config, carrier) if carrier and config.trust != "ignore" else None
    return ctx, propagation.remote_span_context(ctx) if ctx is not None else None


def _without_baggage(carrier: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in carrier.items() if k != "baggage"}


def extract_handshake(
    config: Config, headers: HeaderSource, query: str, subprotocols: Sequence[str], nested: bool = False
) -> tuple[Optional[Context], Optional[str]]:
    """The peer's context from the first configured handshake source that holds one, and that source's name.

    ``nested``: another instrumentation's SERVER span already continued the headers; only the query and
    subprotocol sources are read.
    """
    if config.trust == "ignore":
        return None, None
    wanted = propagation.fields()
    for source in config.handshake_sources:
        if nested and source == "headers":
            continue
        if source == "headers":
            carrier = headers_carrier(headers, wanted)
        elif source == "query":
            carrier = query_carrier(query, wanted)
        else:
            carrier = split_subprotocols(subprotocols)[0]
        if carrier:
            ctx = extract(config, carrier)
            if ctx is not None and propagation.remote_span_context(ctx) is not None:
                return ctx, source
    return None, None


def browser_session(config: Config, query: str, subprotocols: Sequence[str]) -> Optional[str]:
    """A browser's session id, which cannot travel in the ``wstrace-session`` header: a ``wstrace-session``
    query parameter or a ``wstrace.sid.<id>`` subprotocol token, from the sources the server reads context
    from, in their order; ``None`` under trust ``ignore``. The header, when sent, wins (the caller's rule)."""
    if config.trust == "ignore":
        return None
    for source in config.handshake_sources:
        if source == "query":
            found = session_or_none(query_session(query))
        elif source == "subprotocol":
            found = session_or_none(subprotocol_session(subprotocols))
        else:
            continue
        if found is not None:
            return found
    return None


def apply_trust(config: Config, peer: Optional[Context], ambient: Context) -> tuple[Context, Sequence[Link]]:
    """Parent on, link to, or ignore a peer's handshake context, per the trust policy."""
    if peer is None:
        return ambient, ()
    if config.trust == "parent":
        return peer, ()
    span_context = propagation.remote_span_context(peer)
    return ambient, (link(span_context, "remote"),) if span_context is not None else ()


def request_headers(config: Config, handshake: Optional[Span], session_id: str) -> dict[str, str]:
    """Headers a client adds to its upgrade request: context, envelope offer, session id."""
    headers: dict[str, str] = {}
    try:
        if handshake is not None:
            headers.update(propagation.inject(trace.set_span_in_context(handshake)))
    except Exception as exc:
        # A propagator that cannot write the context (baggage holding a lone
        # surrogate) must not cost the envelope offer and the session id.
        warn_once("injecting handshake context", exc)
    if config.envelope != "off":
        headers[sc.ENVELOPE_HEADER] = offer_header(config.envelope_format)
    headers[sc.SESSION_HEADER] = session_id
    return headers


def client_attributes(
    url: str, scheme: str, host: Optional[str], port: Optional[int], session_id: str
) -> dict[str, Any]:
    """A client handshake span's attributes (the URL without query and credentials)."""
    attributes: dict[str, Any] = {
        sc.HTTP_REQUEST_METHOD: "GET",
        sc.URL_FULL: strip_query(url),
        sc.URL_SCHEME: scheme,
        sc.SESSION_ID: session_id,
    }
    if host:
        attributes[sc.SERVER_ADDRESS] = host
    if port:
        attributes[sc.SERVER_PORT] = port
    return attributes


def server_attributes(
    method: str,
    path: str,
    scheme: str,
    route: Optional[str],
    session_id: str,
    source: Optional[str],
    addresses: Iterable[tuple[str, Any]],
) -> dict[str, Any]:
    """A server handshake span's attributes; ``addresses`` are (key, value) pairs, recorded when set."""
    attributes: dict[str, Any] = {
        sc.HTTP_REQUEST_METHOD: method,
        sc.URL_PATH: path,
        sc.URL_SCHEME: scheme,
        sc.SESSION_ID: session_id,
    }
    if route:
        attributes[sc.HTTP_ROUTE] = route
    attributes.update((key, value) for key, value in addresses if value)
    if source:
        attributes[sc.CONTEXT_SOURCE] = source
    return attributes


class Request(NamedTuple):
    """What a server reads from an upgrade request."""

    offer: Optional[EnvelopeFormat]
    """The envelope format the client offered."""
    session_id: Optional[str]
    """The client's session id, if well formed and trusted."""
    context: Optional[Context]
    """The client's context, from the first handshake source that holds one."""
    source: Optional[str]
    """That source's name."""
    instrumented: bool
    """The client sent a wstrace header: it is instrumented, and expects the answer."""


def read_request(
    config: Config, headers: HeaderSource, query: str, subprotocols: Sequence[str], nested: bool = False
) -> Request:
    pairs = header_pairs(headers)
    session = None
    offers: list[str] = []
    instrumented = False
    for key, value in pairs:
        if key == sc.SESSION_HEADER:
            instrumented = True
            if config.trust != "ignore":
                session = session_or_none(value)
        elif key == sc.ENVELOPE_HEADER:
            instrumented = True
            offers.append(value)
    context, source = extract_handshake(config, pairs, query, subprotocols, nested)
    return Request(_one_offer(offers), session, context, source, instrumented)


class ServerStart(NamedTuple):
    """How a server's handshake span starts, from its upgrade request."""

    request: Request
    session_id: Optional[str]
    """The client's session id, or a browser's (query or subprotocol token)."""
    parent: Context
    links: Sequence[Link]
    kind: SpanKind


def server_start(
    config: Config, headers: HeaderSource, query: str, subprotocols: Sequence[str], nested_in: Optional[SpanContext]
) -> ServerStart:
    """Read the request and apply the trust policy. ``nested_in``: another instrumentation's SERVER span for
    this request; the handshake span is then ``INTERNAL`` (one SERVER span per request), reads context only from
    the query and subprotocol (the outer span continued the headers), and links the outer span unless parented
    on it."""
    nested = nested_in is not None and nested_in.is_valid
    request = read_request(config, headers, query, subprotocols, nested)
    session = request.session_id or browser_session(config, query, subprotocols)
    parent, links = apply_trust(config, request.context, otel_context.get_current())
    if not nested:
        return ServerStart(request, session, parent, links, SpanKind.SERVER)
    if trace.get_current_span(parent).get_span_context() != nested_in:
        links = (*links, link(nested_in, "server"))  # type: ignore[arg-type]  # nested: not None
    return ServerStart(request, session, parent, links, SpanKind.INTERNAL)


def read_response(config: Config, headers: HeaderSource) -> tuple[Optional[EnvelopeFormat], Optional[str]]:
    """The envelope format in force after a 101 with ``headers``, and the session id it names.

    The envelope is in force if the answer made it into the 101, or if it is
    forced with ``envelope="always"``. The answer names the format, even one
    other than the offer's: the server applies the one it answered.
    """
    session = None
    answers: list[str] = []
    for name, value in header_pairs(headers):
        if name == sc.ENVELOPE_HEADER:
            answers.append(value)
        elif name == sc.SESSION_HEADER:
            session = value
    agreed = _one_offer(answers)
    if config.envelope == "always":
        return agreed or config.envelope_format, session_or_none(session)
    return (agreed if config.envelope == "negotiate" else None), session_or_none(session)
