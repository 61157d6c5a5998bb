"""Translation between websocket-client objects and core events."""

from __future__ import annotations

import threading
from typing import Any, Optional

from wstrace.connection import ConnectionTracer
from wstrace.instrumentation._instrumentor import Settings, client_tracer


__all__ = [
    "ATTR",
    "CLOSING",
    "OPCODE_BINARY",
    "OPCODE_CLOSE",
    "OPCODE_CONT",
    "OPCODE_TEXT",
    "SENDING",
    "close_frame_args",
    "connection_lost",
    "done_here",
    "handshake_status",
    "mark_receiver",
    "merged_header",
    "new_client_tracer",
    "tracer_of",
]

ATTR = "_wstrace"
"""Attribute under which a ``WebSocket`` holds its ConnectionTracer."""
CLOSING = "_wstrace_closing"
"""Set on a ``WebSocket`` (true) while its ``close()`` runs."""
SENDING = "_wstrace_sending"
"""Set on a ``WebSocket`` while it sends a fragmented message frame by frame: the message's ``Outgoing``."""
_RECEIVER = "_wstrace_receiver"
"""Identity of the thread that last had a message returned (and its receive span attached)."""

# RFC 6455 opcodes, as in websocket.ABNF; repeated here so that importing the
# adapter does not import the library.
OPCODE_CONT = 0x0
OPCODE_TEXT = 0x1
OPCODE_BINARY = 0x2
OPCODE_CLOSE = 0x8


def tracer_of(ws: Any) -> Optional[ConnectionTracer]:
    """The connection's ConnectionTracer; ``None`` for anything else (a Mock answers every attribute)."""
    ct = getattr(ws, ATTR, None)
    return ct if isinstance(ct, ConnectionTracer) else None


def new_client_tracer(settings: Settings, url: Any) -> Optional[ConnectionTracer]:
    """Start the handshake span for ``url``; ``None`` if it is not a string (the library will say why)."""
    return client_tracer(settings, url) if isinstance(url, str) else None


def merged_header(header: Any, ours: dict[str, str]) -> Any:
    """The caller's ``header`` option plus ours, in the caller's shape; a header the caller set wins.

    websocket-client takes a dict or a list of ``"Name: value"`` lines. A dict
    stays a dict because the library looks ``Sec-WebSocket-Key`` up in it.
    Any other shape is returned untouched (nothing injected) rather than guessed at.
    """
    if header is None:
        return [f"{name}: {value}" for name, value in ours.items()]
    if isinstance(header, dict):
        merged = dict(header)
        taken = {str(name).lower() for name in merged}
        merged.update({name: value for name, value in ours.items() if name not in taken})
        return merged
    if isinstance(header, (list, tuple)):
        lines = list(header)
        taken = {line.split(":", 1)[0].strip().lower() for line in lines if isinstance(line, str)}
        lines.extend(f"{name}: {value}" for name, value in ours.items() if name not in taken)
        return lines
    return header


def handshake_status(ws: Any, error: BaseException) -> Optional[int]:
    """The HTTP status of a failed handshake, when there was a response."""
    status = getattr(error, "status_code", None)  # WebSocketBadStatusException
    if isinstance(status, int):
        return status
    response = getattr(ws, "handshake_response", None)
    status = getattr(response, "status", None)
    return int(status) if isinstance(status, int) and status != 101 else None


def close_frame_args(data: Any) -> tuple[Optional[int], str]:
    """Code and reason from a close frame's payload: 2 bytes big-endian code, then UTF-8 reason."""
    if isinstance(data, str):
        data = data.encode("latin-1", "replace")
    if not data or len(data) < 2:
        return None, ""  # no status code in the frame
    return int.from_bytes(data[:2], "big"), bytes(data[2:]).decode("utf-8", "replace")


def close_reason_text(reason: Any) -> str:
    if isinstance(reason, (bytes, bytearray)):
        return bytes(reason).decode("utf-8", "replace")
    return reason if isinstance(reason, str) else ""


def connection_lost(error: BaseException) -> bool:
    """Whether a receive error means the connection is gone (a timeout or protocol error does not)."""
    from websocket import WebSocketConnectionClosedException  # noqa: PLC0415 - only imported once instrumented

    if isinstance(error, WebSocketConnectionClosedException):
        return True
    return isinstance(error, OSError) and not isinstance(error, (TimeoutError, BlockingIOError, InterruptedError))


def mark_receiver(ws: Any) -> None:
    """Remember which thread the receive span was attached in."""
    setattr(ws, _RECEIVER, threading.get_ident())


def done_here(ws: Any, ct: ConnectionTracer) -> None:
    """End the last receive span if this thread attached it.

    From another thread (a ``close()`` while a reader thread handles a message)
    this does nothing: ending it there would drop the context token that only
    the reader thread can detach; ``closed()`` ends the span instead and the
    reader detaches on its next receive.
    """
    if getattr(ws, _RECEIVER, None) in (None, threading.get_ident()):
        ct.receive_done()
