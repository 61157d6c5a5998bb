"""``max_msg_size`` on a connection that carries the envelope: the application's limit holds for its payloads.

aiohttp's frame reader, built when the handshake completes, refuses a message that reaches
``max_msg_size`` (``WebSocketResponse(max_msg_size=...)``, ``ws_connect(max_msg_size=...)``) and hands the
error to ``receive()``, which closes with 1009 and returns an ``ERROR`` message. Where the envelope may be in
force, the reader is built with the limit raised by the most an envelope adds (the server knows its answer
before ``prepare`` sends it; the client raises it for the format it offers), and ``receive()`` holds each
message's payload, measured without the envelope, to the application's limit with aiohttp's own rule: an
uncompressed message of exactly the limit is refused, a decompressed one over it. A message over it is not
delivered: the same error is put in the reader, and aiohttp's ``receive()`` handles it as its own.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Optional

from wstrace._limits import Limit, in_force, overhead
from wstrace._log import warn_once
from wstrace.config import Config
from wstrace.connection import ConnectionTracer


__all__ = ["LIMIT", "client_limit", "refuse", "server_limit", "settle"]

LIMIT = "_wstrace_limit"
"""Attribute under which a WebSocket response object holds the application's :class:`Limit`."""


def client_limit(config: Config, wrapped: Callable[..., Any], kwargs: dict[str, Any]) -> Optional[Limit]:
    """Before ``ws_connect``: raise ``max_msg_size`` by the overhead of the envelope the client offers."""
    if config.envelope == "off":
        return None
    try:
        limit = kwargs.get("max_msg_size", _default(wrapped))
        if not isinstance(limit, int) or limit <= 0:  # 0: no limit
            return None
        kwargs["max_msg_size"] = limit + overhead(config, config.envelope_format)
        return Limit(limit)
    except Exception as exc:
        warn_once("raising aiohttp's max_msg_size by the envelope", exc)
        return None


def _default(wrapped: Callable[..., Any]) -> Any:
    parameter = inspect.signature(wrapped).parameters.get("max_msg_size")
    return parameter.default if parameter is not None else None


def server_limit(ws: Any, config: Config) -> Optional[Limit]:
    """Before ``prepare``, with the envelope answer in ``ws.headers``: build the reader with the limit raised."""
    try:
        fmt = in_force(config, ws.headers)
        limit = ws._max_msg_size
        if fmt is None or not isinstance(limit, int) or limit <= 0:
            return None
        ws._max_msg_size = limit + overhead(config, fmt)
        return Limit(limit)
    except Exception as exc:
        warn_once("raising aiohttp's max_msg_size by the envelope", exc)
        return None


def settle(ws: Any, limit: Optional[Limit], ct: ConnectionTracer, *, server: bool) -> None:
    """After the handshake: the envelope in force (if any), and aiohttp's rule for the negotiated compression."""
    if limit is None:
        return
    try:
        if server:
            ws._max_msg_size = limit.limit  # the reader took the raised one; the application's value is back
        limit.settle(ct.config, ct.envelope)
        limit.inclusive = not ws.compress
        setattr(ws, LIMIT, limit)
    except Exception as exc:
        warn_once("raising aiohttp's max_msg_size by the envelope", exc)


def refuse(ws: Any, data: Any) -> bool:
    """Whether the message holding ``data`` is over the application's limit; if so, the error aiohttp's
    reader raises for such a message is now in the reader, for ``receive()`` to handle."""
    limit: Optional[Limit] = getattr(ws, LIMIT, None)
    if not isinstance(limit, Limit):
        return False
    found = limit.exceeded(data)
    if found is None:
        return False
    try:
        from aiohttp.http import WebSocketError, WSCloseCode  # noqa: PLC0415 - loaded with the connection

        if limit.inclusive:
            text = f"Message size {found} exceeds limit {limit.limit}"
        else:
            text = f"Decompressed message exceeds size limit {limit.limit}"
        reader = ws._reader
        reader._buffer.clear()  # aiohttp's reader stops at the refused message: nothing after it is read
        reader.set_exception(WebSocketError(WSCloseCode.MESSAGE_TOO_BIG, text))
    except Exception as exc:  # the message is delivered, as if it were under the limit
        warn_once("refusing a message over aiohttp's max_msg_size", exc)
        return False
    return True
