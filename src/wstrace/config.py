"""Options, settable by keyword and by ``WSTRACE_*`` environment variables.

A keyword wins over the environment, which wins over the default. A bad
keyword raises :class:`~wstrace.exceptions.ConfigError` naming the option (the
caller can fix it); a bad environment value, whatever is wrong with it, is
logged once on the ``wstrace.config`` logger and ignored, because an
instrumentation must never stop the host application from starting.

``carry_link`` (``WSTRACE_CARRY_LINK``) is parsed here too, with the same rules,
but it is an option of the queue and Redis helpers, not of :class:`Config`.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
from dataclasses import dataclass, replace
from typing import Any, Callable, Hashable, Literal, Mapping, Optional, cast, get_args

from wstrace._log import warn_once
from wstrace.envelope import DEFAULT_JSON_FIELD, DEFAULT_MAX_HEADER_BYTES
from wstrace.exceptions import ConfigError


__all__ = [
    "CARRY_LINK_ENV",
    "MAX_CAPTURE_BYTES",
    "CarryLink",
    "Config",
    "EnvelopeFormat",
    "EnvelopeMode",
    "ExcludedUrls",
    "HandshakeSource",
    "Model",
    "RouteTemplates",
    "Trust",
    "carry_link",
]

_log = logging.getLogger(__name__)

MAX_CAPTURE_BYTES = 65536
"""Largest ``capture_payload_bytes``: a span attribute is no place for whole messages."""

Model = Literal["message", "connection"]
EnvelopeMode = Literal["off", "negotiate", "always"]
EnvelopeFormat = Literal["frame", "json"]
Trust = Literal["parent", "link", "ignore"]
HandshakeSource = Literal["headers", "query", "subprotocol"]
CarryLink = Literal["parent", "link"]
"""How a queue's ``process`` span relates to the context its item was enqueued in.

``parent``: it is the child of that context (one trace), and links to it.
``link``: it starts a new trace and only links to it.
"""

CARRY_LINK_ENV = "WSTRACE_CARRY_LINK"
"""Environment variable giving the default :data:`CarryLink` (``parent`` if unset)."""


def _choice(kind: Any) -> Callable[[str], str]:
    allowed = get_args(kind)

    def parse(value: str) -> str:
        # Stripped and case-insensitive, by keyword as in the environment (docs/configuration.md).
        if not isinstance(value, str) or value.strip().lower() not in allowed:
            raise ConfigError(f"expected one of {', '.join(allowed)}, got {value!r}")
        return value.strip().lower()

    return parse


def _sources(value: str | tuple[str, ...]) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(s, str) for s in items):
        raise ConfigError(f"expected a comma-separated string or a sequence of strings, got {value!r}")
    result = tuple(dict.fromkeys(s.strip().lower() for s in items if s.strip()))
    allowed = get_args(HandshakeSource)
    bad = [s for s in result if s not in allowed]
    if bad:
        raise ConfigError(f"expected entries among {', '.join(allowed)}, got {', '.join(bad)}")
    return result


def _bool(value: str | bool) -> bool:
    if isinstance(value, bool):
        return value
    if not isinstance(value, str):
        raise ConfigError(f"expected a boolean, got {value!r}")
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"expected a boolean, got {value!r}")


def _bytes(value: str | int) -> int:
    """A whole number of bytes, given as a number or a string."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ConfigError(f"expected a whole number of bytes, got {value!r}")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"expected a whole number of bytes, got {value!r}") from None


def _size(value: str | int) -> int:
    size = _bytes(value)
    if not 0 <= size <= 0xFFFF:
        raise ConfigError(f"expected a size within 0..65535 bytes, got {size}")
    return size


def _seconds(value: str | float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"expected a number of seconds, got {value!r}")
    try:
        seconds = float(value)
    except ValueError:
        raise ConfigError(f"expected a number of seconds, got {value!r}") from None
    if not 0 <= seconds <= 86400 or seconds != seconds:
        raise ConfigError(f"expected seconds within 0..86400, got {value!r}")
    return seconds


def _callable(value: Any) -> Callable[..., Any]:
    """A callable, or ``module:attribute`` naming one (how an environment variable gives it)."""
    if callable(value):
        return value  # type: ignore[no-any-return]
    if not isinstance(value, str) or ":" not in value:
        raise ConfigError(f"expected a callable or 'module:function', got {value!r}")
    module, _, name = value.strip().partition(":")
    if not module or not name or module.startswith("."):
        # import_module would raise ValueError (empty name) or TypeError (relative, no package).
        raise ConfigError(f"expected 'module:function' with an absolute module name, got {value!r}")
    try:
        found = getattr(importlib.import_module(module), name)
    except Exception as exc:  # a module that fails to import raises anything at all
        raise ConfigError(f"cannot import {value!r}: {type(exc).__name__}: {exc}") from None
    if not callable(found):
        raise ConfigError(f"{value!r} is not callable")
    return found  # type: ignore[no-any-return]


class _Compiled:
    """An option compiled from strings: equal to, and hashed as, another of its class from the same strings."""

    __slots__ = ()

    def _source(self) -> tuple[str, ...]:
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        return isinstance(other, type(self)) and other._source() == self._source()

    def __hash__(self) -> int:
        return hash(self._source())


class RouteTemplates(_Compiled):
    """A ``routes`` option given as templates: ``/chat/{id}`` names every ``/chat/<one segment>`` path."""

    __slots__ = ("_patterns", "templates")

    def __init__(self, templates: tuple[str, ...]) -> None:
        self.templates = templates
        self._patterns = [(re.compile(_template_pattern(t)), t) for t in templates]

    def __call__(self, path: str) -> Optional[str]:
        for pattern, template in self._patterns:
            if pattern.match(path):
                return template
        return None

    def _source(self) -> tuple[str, ...]:
        return self.templates

    def __repr__(self) -> str:
        return f"RouteTemplates({', '.join(self.templates)})"


def _template_pattern(template: str) -> str:
    """``/a/{x}/b`` as a regular expression: each ``{name}`` is one path segment; a trailing ``/`` is optional."""
    parts = re.split(r"\{[^{}/]*\}", template.rstrip("/") or "/")
    return "[^/]+".join(re.escape(part) for part in parts) + "/?\\Z"


def _strings(value: Any, expected: str) -> tuple[str, ...]:
    """A sequence of strings, or a comma-separated string, as its non-empty items stripped; anything else
    raises, saying what was ``expected``."""
    items: Any = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(item, str) for item in items):
        raise ConfigError(f"expected {expected}, got {value!r}")
    return tuple(item.strip() for item in items if item.strip())


def _routes(value: Any) -> Callable[[str], Optional[str]]:
    """Route templates (a sequence, or a comma-separated string), or a callable (``module:function``)."""
    if callable(value):
        return value  # type: ignore[no-any-return]
    if isinstance(value, str):
        text = value.strip()
        if text and not text.startswith("/") and ":" in text:
            return _callable(text)
    templates = _strings(value, "route templates such as '/chat/{id}', or a callable")
    bad = [t for t in templates if not t.startswith("/")]
    if not templates or bad:
        raise ConfigError(f"expected route templates starting with '/', such as '/chat/{{id}}', got {value!r}")
    return RouteTemplates(templates)


def _header_names(value: Any) -> tuple[str, ...]:
    """Header names or regular expressions: a sequence, or a comma-separated string."""
    names = tuple(name.lower() for name in _strings(value, "header names (comma-separated)"))
    for name in names:
        try:
            re.compile(name)
        except re.error as exc:
            raise ConfigError(f"not a header name or regular expression ({exc}): {name!r}") from None
    return names


class ExcludedUrls(_Compiled):
    """An ``excluded_urls`` option given as regular expressions: true for a URL any of them is found in."""

    __slots__ = ("_pattern", "patterns")

    def __init__(self, patterns: tuple[str, ...]) -> None:
        self.patterns = patterns
        self._pattern = re.compile("|".join(f"(?:{p})" for p in patterns))

    def __call__(self, url: str) -> bool:
        return self._pattern.search(url) is not None

    def _source(self) -> tuple[str, ...]:
        return self.patterns

    def __repr__(self) -> str:
        return f"ExcludedUrls({self.patterns!r})"


def _excluded(value: Any) -> Callable[[str], bool]:
    """Regular expressions (a sequence, or a comma-separated string), or a callable (``module:function``)."""
    if callable(value):
        return value  # type: ignore[no-any-return]
    patterns = _strings(value, "regular expressions (comma-separated), or a callable")
    if not patterns:
        raise ConfigError(f"expected at least one regular expression, got {value!r}")
    try:
        return ExcludedUrls(patterns)
    except re.error as exc:
        raise ConfigError(f"not a regular expression ({exc}): {value!r}") from None


def _capture_size(value: str | int) -> int:
    size = _bytes(value)
    if not 1 <= size <= MAX_CAPTURE_BYTES:
        raise ConfigError(f"expected a capture size within 1..{MAX_CAPTURE_BYTES} bytes, got {size}")
    return size


def _field(value: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"expected a non-empty string, got {value!r}")
    return value


@dataclass(frozen=True)
class Config:
    """Every wstrace option. Build one with :meth:`Config.load`."""

    model: Model = "message"
    """``message``: each inbound message (and its replies) is its own trace, linked to
    the handshake. ``connection``: one trace per connection. Env ``WSTRACE_MODEL``."""

    envelope: EnvelopeMode = "negotiate"
    """``off``, ``negotiate`` (in the handshake) or ``always`` (both ends forced on,
    for browsers). Env ``WSTRACE_ENVELOPE``."""

    envelope_format: EnvelopeFormat = "frame"
    """``frame`` (a prefix on every data frame) or ``json`` (a member of JSON-object
    messages). Env ``WSTRACE_ENVELOPE_FORMAT``."""

    json_field: str = DEFAULT_JSON_FIELD
    """Member name for the ``json`` format. Env ``WSTRACE_JSON_FIELD``."""

    max_envelope_bytes: int = DEFAULT_MAX_HEADER_BYTES
    """Cap on an envelope header, both ways. Env ``WSTRACE_MAX_ENVELOPE_BYTES``."""

    trust: Trust = "parent"
    """What to do with incoming context: ``parent`` on it, ``link`` to it, or
    ``ignore`` it. Env ``WSTRACE_TRUST``."""

    handshake_sources: tuple[HandshakeSource, ...] = ("headers",)
    """Where a server looks for handshake context: ``headers``, ``query``,
    ``subprotocol`` (comma-separated in env ``WSTRACE_HANDSHAKE_SOURCES``)."""

    message_spans: bool = True
    """Whether to make message spans at all (off: handshake, connection and close
    spans only). Env ``WSTRACE_MESSAGE_SPANS``."""

    metrics: bool = True
    """Whether to record wstrace's metrics (connections, messages, streams). Off saves one
    SDK histogram record (4-8 µs) per reply. Env ``WSTRACE_METRICS``."""

    streams: bool = True
    """Whether replies form streams: a server's messages sent while it handles one
    inbound message, and a client's messages received after it sent one, become one
    span with stream metrics instead of a span each. Env ``WSTRACE_STREAMS``."""

    chunk_spans: bool = False
    """Also make a span per chunk of a stream (costly). Env ``WSTRACE_CHUNK_SPANS``."""

    stream_idle: float = 5.0
    """A gap between chunks longer than this (seconds) ends a stream. Env ``WSTRACE_STREAM_IDLE``."""

    run_limit: float = 60.0
    """A run (messages sent in a row under one context, with no message to answer) that has lasted this long
    (seconds) ends, and its next message starts a new one linked to it, so a connection that sends steadily
    (heartbeats, telemetry) still exports its spans as it goes. ``0``: no limit. Env ``WSTRACE_RUN_LIMIT``."""

    stall_threshold: float = 1.0
    """A gap between chunks longer than this (seconds) is a stall event. Env ``WSTRACE_STALL_THRESHOLD``."""

    stream_end: Optional[Callable[[Any], bool]] = None
    """Called with each streamed payload; true means it is the last chunk. Env
    ``WSTRACE_STREAM_END`` names one as ``module:function``."""

    stream_key: Optional[Callable[[Any], Optional[Hashable]]] = None
    """Called with each client payload sent and received; pairs replies with their
    request when several are in flight (``None``: not a keyed message). Env
    ``WSTRACE_STREAM_KEY`` names one as ``module:function``."""

    capture_payload: bool = False
    """Record each message's payload (truncated) as ``websocket.message.body`` on its span.
    Off by default: payloads are application data. Env ``WSTRACE_CAPTURE_PAYLOAD``."""

    capture_payload_bytes: int = 256
    """At most this many payload bytes are recorded (1..65536). Env ``WSTRACE_CAPTURE_PAYLOAD_BYTES``."""

    routes: Optional[Callable[[str], Optional[str]]] = None
    """Names the route of a request path where no framework router does (websockets and tornado
    servers without a template, every client): templates such as ``/chat/{id}`` (each ``{name}`` is
    one path segment; the first that matches wins), or a callable ``path -> route or None``. Without
    a route, span names carry no path and no ``http.route`` is recorded, so metrics never see a raw
    path. Env ``WSTRACE_ROUTES``: comma-separated templates, or ``module:function``."""

    excluded_urls: Optional[Callable[[str], bool]] = None
    """Connections whose URL matches are not traced at all: no spans, no metrics, no envelope, no header.
    Comma-separated regular expressions, each searched in the URL without its query (``ws://host:port/path``
    where the host is known, else the path), as OpenTelemetry's HTTP instrumentations do; or a callable
    ``url -> bool``. Env ``WSTRACE_EXCLUDED_URLS``, else ``OTEL_PYTHON_EXCLUDED_URLS``."""

    request_hook: Optional[Callable[[Any, list[tuple[str, str]]], None]] = None
    """``f(span, headers)``, called as a handshake span starts: a server gets the upgrade request's headers, a
    client the headers wstrace adds to its request (the only ones it sees). For attributes of your own; it
    may not end the span. Env ``WSTRACE_REQUEST_HOOK`` names one as ``module:function``."""

    response_hook: Optional[Callable[[Any, Optional[int], list[tuple[str, str]]], None]] = None
    """``f(span, status, headers)``, called before a handshake span ends: the 101's status and headers (both
    sides), or a failed handshake's status (``None`` if there was no response) and no headers. Env
    ``WSTRACE_RESPONSE_HOOK``."""

    message_hook: Optional[Callable[[Any, Any, str], None]] = None
    """``f(span, payload, direction)``, called as a message's span (or a stream's, with its first message)
    starts; ``direction`` is ``sent`` or ``received``. Env ``WSTRACE_MESSAGE_HOOK``."""

    capture_request_headers: Optional[tuple[str, ...]] = None
    """Upgrade request headers recorded on the server's handshake span as ``http.request.header.<name>``:
    names or regular expressions, case-insensitive. Env ``WSTRACE_CAPTURE_REQUEST_HEADERS``, else
    ``OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST``."""

    capture_response_headers: Optional[tuple[str, ...]] = None
    """101 response headers recorded on both ends' handshake spans as ``http.response.header.<name>``. Env
    ``WSTRACE_CAPTURE_RESPONSE_HEADERS``, else ``OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE``
    (server) and ``..._CLIENT_RESPONSE`` (client), both read."""

    sanitize_headers: Optional[tuple[str, ...]] = None
    """Captured headers whose value is recorded as ``[REDACTED]``: names or regular expressions. Env
    ``WSTRACE_SANITIZE_HEADERS``, else ``OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS``."""

    redact: Optional[Callable[[Any], Any]] = None
    """With ``capture_payload``: called with each payload, returns what to record (``str``,
    ``bytes``, or ``None`` for nothing). Env ``WSTRACE_REDACT`` names one as ``module:function``."""

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Config:
        """Read the environment, then apply keyword overrides (``None`` means unset).

        A bad keyword raises :class:`ConfigError`; a bad environment value is logged
        once and ignored.
        """
        unknown = set(overrides) - set(_PARSERS)
        if unknown:
            raise ConfigError(f"unknown wstrace option(s): {', '.join(sorted(unknown))}")
        values = {name: _parse_keyword(name, value) for name, value in overrides.items() if value is not None}
        defaults = cls()
        env = os.environ if environ is None else environ
        for name in _PARSERS:
            if name not in values:
                parsed = _parse_env(env, name, getattr(defaults, name))
                for variable in _OTEL_FALLBACKS.get(name, ()):  # OpenTelemetry's own, read by its HTTP instrumentations
                    if parsed is _UNSET:
                        parsed = _parse_env(env, name, None, variable=variable)
                    elif name == "capture_response_headers":  # the server's and the client's, both
                        more = _parse_env(env, name, None, variable=variable)
                        parsed = parsed + more if more is not _UNSET else parsed
                if parsed is not _UNSET:
                    values[name] = parsed
        return replace(defaults, **values)


def _parse_keyword(name: str, value: Any) -> Any:
    try:
        return _PARSERS[name](value)
    except ConfigError as exc:
        raise ConfigError(f"{name}: {exc}") from None


_UNSET: Any = object()


_CAPTURE = "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_"
_OTEL_FALLBACKS = {
    "excluded_urls": ("OTEL_PYTHON_EXCLUDED_URLS",),
    "capture_request_headers": (_CAPTURE + "SERVER_REQUEST",),
    "capture_response_headers": (_CAPTURE + "SERVER_RESPONSE", _CAPTURE + "CLIENT_RESPONSE"),
    "sanitize_headers": (_CAPTURE + "SANITIZE_FIELDS",),
}
"""OpenTelemetry's variables, read for an option whose ``WSTRACE_`` variable is unset (in this order)."""


def _parse_env(
    env: Mapping[str, str],
    name: str,
    default: Any,
    parser: Optional[Callable[[Any], Any]] = None,
    variable: Optional[str] = None,
) -> Any:
    """The value of ``WSTRACE_<NAME>`` (or ``variable``), or ``_UNSET`` when it is unset, blank or bad (logged once)."""
    variable = variable or f"WSTRACE_{name.upper()}"
    raw = env.get(variable)
    if raw is None or not raw.strip():
        return _UNSET
    try:
        return (parser or _PARSERS[name])(raw)
    except Exception as exc:  # ConfigError, or anything a parser did not foresee: never raise at start-up
        warn_once(f"ignoring {variable}={raw!r} ({name}: {exc}); using the default, {default!r}", logger=_log)
        return _UNSET


_parse_carry_link = _choice(CarryLink)


def carry_link(value: Optional[str] = None, environ: Optional[Mapping[str, str]] = None) -> CarryLink:
    """The ``carry_link`` of a queue or Redis helper: the keyword if given (a bad one raises
    :class:`ConfigError`), else ``WSTRACE_CARRY_LINK`` (a bad one is logged once and ignored),
    else ``parent``. Parsed like every choice option: stripped and case-insensitive."""
    if value is not None:
        try:
            return cast(CarryLink, _parse_carry_link(value))
        except ConfigError as exc:
            raise ConfigError(f"carry_link: {exc}") from None
    env = os.environ if environ is None else environ
    parsed = _parse_env(env, "carry_link", "parent", _parse_carry_link)
    return "parent" if parsed is _UNSET else cast(CarryLink, parsed)


_PARSERS: dict[str, Callable[[Any], Any]] = {
    "model": _choice(Model),
    "envelope": _choice(EnvelopeMode),
    "envelope_format": _choice(EnvelopeFormat),
    "json_field": _field,
    "max_envelope_bytes": _size,
    "trust": _choice(Trust),
    "handshake_sources": _sources,
    "message_spans": _bool,
    "metrics": _bool,
    "streams": _bool,
    "chunk_spans": _bool,
    "stream_idle": _seconds,
    "run_limit": _seconds,
    "stall_threshold": _seconds,
    "stream_end": _callable,
    "stream_key": _callable,
    "capture_payload": _bool,
    "capture_payload_bytes": _capture_size,
    "redact": _callable,
    "routes": _routes,
    "excluded_urls": _excluded,
    "request_hook": _callable,
    "response_hook": _callable,
    "message_hook": _callable,
    "capture_request_headers": _header_names,
    "capture_response_headers": _header_names,
    "sanitize_headers": _header_names,
}
