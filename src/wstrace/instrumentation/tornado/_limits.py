"""``max_message_size`` on a connection that carries the envelope: the application's limit holds for its payloads.

tornado compares each frame's length with ``params.max_message_size`` (the handler's
``websocket_max_message_size`` setting, or ``websocket_connect(max_message_size=...)``), and its inflater has
the same limit. Once the envelope is in force, both are raised by the most an envelope adds, before the
frame loop reads the first frame; each data message is then held to the application's limit, its payload
measured without the envelope, where tornado hands it to ``on_message``. Over the limit, the connection is
closed as tornado closes it: close code 1009, reason ``message too big`` (``... after decompression`` for a
compressed message), then aborted, and the message is not delivered.
"""

from __future__ import annotations

from typing import Any

from wstrace._close import MESSAGE_TOO_BIG
from wstrace._limits import Limit, overhead
from wstrace._log import warn_once
from wstrace.instrumentation.tornado._common import Traced


__all__ = ["raise_limit", "refused"]


def raise_limit(t: Traced, protocol: Any) -> None:
    """The envelope is in force from now on: raise tornado's limits by its overhead, keep the application's."""
    ct = t.ct
    fmt = ct.envelope
    if fmt is None or protocol is None:
        return
    try:
        params = protocol.params
        limit = params.max_message_size
        if not isinstance(limit, int):
            return  # tornado has no "no limit" value, but a subclass may
        extra = overhead(ct.config, fmt)
        params.max_message_size = limit + extra
        inflater: Any = getattr(protocol, "_decompressor", None)  # made with the limit, when the 101 was read
        if isinstance(getattr(inflater, "_max_message_size", None), int):
            inflater._max_message_size += extra
        t.limit = Limit(limit)
        t.limit.settle(ct.config, fmt)
    except Exception as exc:  # tornado's limit stays as it was
        warn_once("raising tornado's max_message_size by the envelope", exc)


def refused(t: Traced, protocol: Any, message: Any) -> bool:
    """Whether ``message``'s payload is over the application's limit; if so, the connection is closed as
    tornado closes it for a message over its limit."""
    limit = t.limit
    if limit is None or limit.exceeded(message) is None:
        return False
    try:
        compressed = getattr(protocol, "_frame_compressed", False) is True
        protocol.close(MESSAGE_TOO_BIG, "message too big after decompression" if compressed else "message too big")
        protocol._abort()
    except Exception as exc:
        warn_once("refusing a message over tornado's max_message_size", exc)
        return False
    return True
