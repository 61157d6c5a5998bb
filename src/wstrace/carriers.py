"""Turn the places a handshake can carry context into plain carriers.

Every source (an HTTP header list or mapping, a query string, a subprotocol
list) becomes a ``dict[str, str]`` with lowercase keys, holding only the
fields the global propagator reads, each capped in size. Propagators then
work on that dict with OpenTelemetry's default getter and setter.
"""

from __future__ import annotations

import re
from typing import Any, Collection, Iterable, Mapping, Optional, Sequence, Union
from urllib.parse import parse_qsl

from wstrace.semconv import SESSION_SUBPROTOCOL_PREFIX, SUBPROTOCOL_PREFIX, TOKEN_PREFIXES


__all__ = [
    "HeaderSource",
    "headers_carrier",
    "hide_trace_tokens",
    "query_carrier",
    "query_session",
    "split_subprotocols",
    "subprotocol_session",
]

HeaderSource = Union[Mapping[str, str], Iterable[tuple[Union[str, bytes], Union[str, bytes]]]]
"""Headers as a mapping (case-insensitive lookup is not assumed) or as a list of pairs."""

MAX_VALUE_BYTES = 8192
"""Longest header value copied into a carrier; W3C baggage allows 8192 bytes."""


def _text(value: str | bytes) -> str:
    return value if isinstance(value, str) else value.decode("latin-1")


def _pairs(headers: Any) -> Iterable[tuple[Any, Any]]:
    raw_items = getattr(headers, "raw_items", None)  # websockets.datastructures.Headers
    if callable(raw_items):
        return raw_items()  # type: ignore[no-any-return]
    if isinstance(headers, Mapping):
        return headers.items()
    return headers  # type: ignore[no-any-return]


def headers_carrier(
    headers: HeaderSource, fields: Collection[str], *, max_value: int = MAX_VALUE_BYTES
) -> dict[str, str]:
    """Collect the propagator's ``fields`` from headers; repeated headers join with ``,``."""
    wanted = {f.lower() for f in fields}
    carrier: dict[str, str] = {}
    dropped: set[str] = set()  # an oversized field stays dropped: later repeats must not revive a part of it
    for name, value in _pairs(headers):
        key = _text(name).lower()
        if key not in wanted or key in dropped:
            continue
        text = _text(value)
        if key in carrier:
            text = f"{carrier[key]},{text}"
        if len(text) <= max_value:
            carrier[key] = text
        else:
            carrier.pop(key, None)
            dropped.add(key)
    return carrier


def query_carrier(query: str | bytes, fields: Collection[str], *, max_value: int = MAX_VALUE_BYTES) -> dict[str, str]:
    """Collect the propagator's ``fields`` from a URL query string (without ``?``)."""
    if isinstance(query, bytes):
        query = query.decode("latin-1")
    if not query or len(query) > 4 * max_value:
        return {}
    wanted = {f.lower() for f in fields}
    carrier: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=False):
        key = name.lower()
        if key in wanted and key not in carrier and len(value) <= max_value:
            carrier[key] = value
    return carrier


def query_session(query: str | bytes) -> Optional[str]:
    """The first ``wstrace-session`` parameter of a URL query string (a browser's session id), unchecked."""
    if isinstance(query, bytes):
        query = query.decode("latin-1")
    if not query or len(query) > 4 * MAX_VALUE_BYTES or "wstrace-session" not in query.lower():
        return None
    for name, value in parse_qsl(query, keep_blank_values=False):
        if name.lower() == "wstrace-session":
            return value
    return None


def subprotocol_session(offered: Sequence[str]) -> Optional[str]:
    """The session id of the first ``wstrace.sid.<id>`` token offered (a browser's), unchecked."""
    for token in offered:
        if token.startswith(SESSION_SUBPROTOCOL_PREFIX):
            return token[len(SESSION_SUBPROTOCOL_PREFIX) :]
    return None


def split_subprotocols(offered: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """Separate a ``wstrace.tp.<traceparent>`` token (and ``wstrace.sid.`` ones) from the application's subprotocols.

    Browsers cannot set headers on the upgrade request, but they can offer
    subprotocols. Returns the carrier and the offered list without our tokens.
    """
    carrier: dict[str, str] = {}
    rest: list[str] = []
    for token in offered:
        if token.startswith(SUBPROTOCOL_PREFIX):
            value = token[len(SUBPROTOCOL_PREFIX) :]
            if value and len(value) <= 128 and "traceparent" not in carrier:
                carrier["traceparent"] = value
        elif not token.startswith(SESSION_SUBPROTOCOL_PREFIX):
            rest.append(token)
    return carrier, rest


_TOKEN = re.compile(r"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")
"""An RFC 9110 token, as a subprotocol must be."""


def hide_trace_tokens(offered: Sequence[str]) -> tuple[list[str], Optional[str]]:
    """The offered subprotocols the application should see, and the token a server should echo.

    ``wstrace.tp.`` tokens carry a browser's context and ``wstrace.sid.`` ones its
    session id (``docs/protocol.md``, section 4); the application never sees them. A browser that offered only
    such tokens fails its handshake unless one is selected, so the first is
    echoed, when the application selects none. A list where one of them is
    not a valid token is left as it is, for the library to reject (websockets
    answers 400): removing it would accept a request the library refuses.
    """
    tokens = [p for p in offered if p.startswith(TOKEN_PREFIXES)]
    if not tokens or not all(_TOKEN.fullmatch(p) for p in tokens):
        return list(offered), None
    rest = split_subprotocols(offered)[1]
    return rest, None if rest else tokens[0]
