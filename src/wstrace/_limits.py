"""The application's message-size limit on a connection that carries the envelope.

A WebSocket library limits the size of the messages it receives (websockets' ``max_size``, aiohttp's
``max_msg_size``, tornado's ``websocket_max_message_size``) and counts every byte of the frame, so the peer's
envelope would eat into the limit the application set: a message exactly at the limit would be refused. Where
the envelope is in force, an adapter raises the library's limit by the most an envelope can add
(:func:`overhead`) and holds the application's payload to the application's own limit (:class:`Limit`),
failing the connection as the library would. A payload at the limit then passes and one byte over fails, as
without wstrace.
"""

from __future__ import annotations

import json
from typing import Any, Optional

from wstrace._handshake import read_response
from wstrace._log import warn_once
from wstrace._spans import size
from wstrace._wire import Wire, wire_for
from wstrace.carriers import HeaderSource
from wstrace.config import Config, EnvelopeFormat


__all__ = ["Limit", "in_force", "overhead"]

_FRAMING = 6
"""Bytes of a framed envelope besides its header: ``1E 77 74 01`` and the 16-bit length (binary), or
``U+001E w t 1`` and the closing ``U+001E`` (text, one byte less)."""


def overhead(config: Config, fmt: Optional[EnvelopeFormat]) -> int:
    """The most bytes an envelope of format ``fmt`` adds to a message this end receives and strips.

    A receiver strips only headers within its own cap (``max_envelope_bytes``), so the cap bounds it:
    ``cap + 6`` in the framed format, ``"<field>":`` plus the carrier object plus a comma in the JSON one.
    """
    if fmt is None:
        return 0
    cap = config.max_envelope_bytes
    if fmt == "json":
        return len(json.dumps(config.json_field)) + 2 + cap  # the key's JSON string, ":", the object, ","
    return cap + _FRAMING


def in_force(config: Config, response_headers: HeaderSource) -> Optional[EnvelopeFormat]:
    """The envelope format a 101 with ``response_headers`` puts in force, as ``ConnectionTracer.opened`` decides."""
    try:
        return read_response(config, response_headers)[0]
    except Exception as exc:  # pragma: no cover - read_response reads headers it cannot parse as absent
        warn_once("reading the envelope answer for the message-size limit", exc)
        return None


class Limit:
    """The application's limit on the payloads of one connection whose library limit was raised.

    ``inclusive``: a payload of exactly ``limit`` bytes is refused too (aiohttp refuses an uncompressed
    message that reaches its limit). Until :meth:`settle` names the envelope in force, or if none is, a
    message is measured whole.
    """

    __slots__ = ("inclusive", "limit", "wire")

    def __init__(self, limit: int, *, inclusive: bool = False) -> None:
        self.limit = limit
        self.inclusive = inclusive
        self.wire: Optional[Wire] = None

    def settle(self, config: Config, fmt: Optional[EnvelopeFormat]) -> None:
        """The envelope in force on the connection (``None``: plain frames, measured whole)."""
        self.wire = wire_for(config, fmt) if fmt is not None else None

    def payload_size(self, message: Any) -> int:
        """Bytes of the application's payload in a received ``message`` (UTF-8 for text): the message
        less exactly the envelope the connection's ``received`` would strip. Never raises."""
        try:
            if isinstance(message, (bytearray, memoryview)):
                message = bytes(message)  # websockets reads frames into a bytearray
            payload = self.wire.strip(message)[0] if self.wire is not None else message
            return size(payload) or 0
        except Exception as exc:  # pragma: no cover - strip never raises on str or bytes
            warn_once("measuring a received payload", exc)
            return size(message) or 0

    def exceeded(self, message: Any) -> Optional[int]:
        """The payload's size if ``message`` breaks the application's limit, else ``None``. Never raises.

        Only a message larger than the limit is measured (stripped): a payload is never larger than its
        message.
        """
        limit = self.limit
        if isinstance(message, (bytes, bytearray, memoryview)):
            if len(message) < limit or (len(message) == limit and not self.inclusive):
                return None
        elif isinstance(message, str):
            if 4 * len(message) < limit:  # a character is at most 4 bytes of UTF-8
                return None
        else:
            return None
        found = self.payload_size(message)
        return found if found > limit or (found == limit and self.inclusive) else None
