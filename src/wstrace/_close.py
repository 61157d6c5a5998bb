"""How a WebSocket connection ended: the close rules, written once for every adapter.

An adapter reports what its library told it, as it happens: a close frame sent
(:meth:`Closing.sent`), a close frame received (:meth:`Closing.received`), and
at last the end of the connection. :func:`outcome` turns that into the code,
reason, initiator and error status that the close span and the close metrics
record, so that both always agree (``docs/semantic-conventions.md``, "Close").
"""

from __future__ import annotations

from typing import Any, Literal, Mapping, NamedTuple, Optional, Protocol


__all__ = [
    "ABNORMAL",
    "INTERNAL_ERROR",
    "NORMAL",
    "NO_STATUS",
    "CloseEvents",
    "Closing",
    "Frame",
    "Initiator",
    "Outcome",
    "as_code",
    "asgi_close",
    "asgi_disconnect",
    "outcome",
    "summarised",
]

Initiator = Literal["local", "remote"]

NORMAL = 1000
"""A normal closure: the code libraries send when the application names none (ASGI's ``websocket.close``,
websocket-client's and aiohttp's ``close()``, tornado's ``close(reason=...)``)."""

NO_STATUS = 1005
"""A close frame without a status code (RFC 6455, section 7.1.5); never sent on the wire."""
ABNORMAL = 1006
"""No close frame arrived: the TCP connection dropped (RFC 6455, section 7.1.5); never sent on the wire."""

MESSAGE_TOO_BIG = 1009
"""A message over the receiver's size limit; libraries close with it, and so do the adapters where they apply
the application's limit under the envelope."""
INTERNAL_ERROR = 1011
"""The server failed; websockets closes with it when a connection handler raises."""
SERVICE_RESTART = 1012
"""The server is restarting; ASGI servers report their own shutdown so."""

# Codes that mean something went wrong: protocol, data and policy errors, server errors,
# TLS failure, and the connection dropping. 1000, 1001 and 1012-1013 are normal ends.
_ERROR_CODES = frozenset({1002, 1003, 1006, 1007, 1008, 1009, 1010, 1011, 1014, 1015})


class Frame(NamedTuple):
    code: Optional[int]
    reason: str


class Outcome(NamedTuple):
    """What the close records: ``code`` is ``None`` when the local end dropped the connection on purpose."""

    code: Optional[int]
    reason: str
    initiator: Optional[Initiator]
    abnormal: bool


def as_code(value: Any) -> Optional[int]:
    """The close code an application passed to its library's ``close()`` as an int (the library took any
    value ``int()`` takes); ``None`` for one that is none."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _code(code: object) -> Optional[int]:
    """A close code as a plain int (a library's IntEnum included); ``None`` for "no status code"."""
    if isinstance(code, int) and not isinstance(code, bool) and code not in (0, NO_STATUS):
        return int(code)  # aiohttp reports a frame without a code as 0, websockets as 1005
    return None


class Closing:
    """The close frames of one connection, in the order they went by."""

    __slots__ = ("first", "received_frame", "sent_frame")

    def __init__(self) -> None:
        self.sent_frame: Optional[Frame] = None
        self.received_frame: Optional[Frame] = None
        self.first: Optional[Initiator] = None

    def sent(self, code: object = None, reason: object = "") -> None:
        """This end sent a close frame (only the first counts)."""
        if self.sent_frame is None:
            self.sent_frame = Frame(_code(code), _reason(reason))
            self.first = self.first or "local"

    def received(self, code: object = None, reason: object = "") -> None:
        """The peer's close frame arrived (only the first counts).

        A code of 1006 is what several libraries report when no frame came at
        all: it is not recorded as a frame.
        """
        if self.received_frame is None and code != ABNORMAL:
            self.received_frame = Frame(_code(code), _reason(reason))
            self.first = self.first or "remote"

    @property
    def reported(self) -> bool:
        return self.first is not None


def _reason(reason: object) -> str:
    if isinstance(reason, bytes):
        reason = reason.decode("utf-8", "replace")
    return reason[:123] if isinstance(reason, str) else ""  # a close reason is at most 123 bytes


def outcome(closing: Closing, *, error: Optional[BaseException] = None, local_end: bool = False) -> Outcome:
    """The rules.

    - Both frames went by: the initiator is the end that sent first, and the
      code and reason are its frame's (1005 for a frame without a code).
    - Only this end's frame: the peer never answered and the TCP connection
      went: 1006, initiated locally, an error.
    - Only the peer's frame: this end closed the TCP connection without
      answering (a server that answers by dropping, a client that exits): the
      peer's code, initiated by the peer.
    - No frame at all: if this end dropped the connection on purpose
      (``local_end``, say an ASGI application that returned without closing),
      no code, initiated locally, not an error; otherwise the TCP connection
      dropped: 1006, no initiator, an error.

    ``error`` (what ended the connection, or what the handler raised) always
    makes the close an error.
    """
    first = closing.first
    sent, received = closing.sent_frame, closing.received_frame
    if received is not None and (first == "remote" or sent is None):
        code: Optional[int] = received.code if received.code is not None else NO_STATUS
        return Outcome(code, received.reason, "remote", error is not None or code in _ERROR_CODES)
    if sent is not None and received is not None:
        code = sent.code if sent.code is not None else NO_STATUS
        return Outcome(code, sent.reason, "local", error is not None or code in _ERROR_CODES)
    if sent is not None:
        return Outcome(ABNORMAL, sent.reason, "local", True)
    if local_end:
        return Outcome(None, "", "local", error is not None)
    return Outcome(ABNORMAL, "", None, True)


def summarised(closing: Closing, code: Optional[int], reason: str, initiator: Optional[Initiator]) -> bool:
    """Record a close that a library reports only at its end, as ``ConnectionTracer.closed``'s keywords.

    ``initiator`` sent the first frame of a completed closing handshake with
    ``code``; ``initiator="local"`` with code 1006 means the peer never answered;
    ``initiator=None`` means the TCP connection dropped. Returns whether this end
    dropped the connection on purpose (``initiator="local"`` and no code).
    """
    if initiator == "local" and code is None:
        return True
    if initiator == "local":
        closing.sent(code, reason)
        if code != ABNORMAL:
            closing.received(code, reason)
    elif initiator == "remote":
        closing.received(code, reason)
    return False


class CloseEvents(Protocol):
    """What receives close frames: ``ConnectionTracer`` (its ``close_sent`` and ``close_received``)."""

    def close_sent(self, code: Optional[int] = None, reason: str = "") -> None: ...

    def close_received(self, code: Optional[int] = None, reason: str = "") -> None: ...


def asgi_disconnect(events: CloseEvents, message: Mapping[str, Any]) -> None:
    """Report the close frames an ASGI ``websocket.disconnect`` event stands for.

    A disconnect caused by the peer's close frame carries its ``code`` and a
    ``reason`` key. ASGI servers also make disconnects up, without ``reason``:
    1005 or 1006 (uvicorn's ``websockets-sansio`` reports a lost TCP connection
    as 1005) mean that no frame arrived, the transport was lost; 1012 is the
    server's own shutdown, a close that this end started and the server
    completed. A 1006 is never a frame, with or without a reason.
    """
    code = message.get("code")
    if not isinstance(code, int):
        code = NO_STATUS  # ASGI's default: the frame had no status code
    if code == ABNORMAL or ("reason" not in message and code == NO_STATUS):
        return
    if "reason" not in message and code == SERVICE_RESTART:
        events.close_sent(code)
        events.close_received(code)
        return
    events.close_received(code, str(message.get("reason") or ""))


def asgi_close(events: CloseEvents, message: Mapping[str, Any]) -> None:
    """Report an ASGI application's ``websocket.close`` event, once the server took it.

    The server sends the frame and completes the closing handshake itself; the
    application hears nothing more (a ``websocket.disconnect`` comes only if it
    asks), so the close is recorded as a completed handshake that this end
    started. ASGI's default code is 1000.
    """
    code = message.get("code")
    code = code if isinstance(code, int) else NORMAL
    reason = str(message.get("reason") or "")
    events.close_sent(code, reason)
    events.close_received(code, reason)
