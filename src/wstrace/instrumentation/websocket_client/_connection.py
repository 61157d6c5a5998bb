"""Message and close wrappers on ``WebSocket``, and the end of each ``WebSocketApp`` read step.

- ``send_frame`` is the one path every outbound message takes (``send``,
  ``send_text``, ``send_bytes``, ``send_binary``, ``WebSocketApp.send*``, and
  frames the application builds itself); the frame's opcode says text or binary.
  A message sent as fragments (a first frame with ``fin=0``, then continuation
  frames) is one message: its envelope and span start with its first frame, and
  the span ends with its last.
- ``recv_data_frame`` is the one path every inbound message takes (``recv``,
  ``recv_data``, iteration, and ``WebSocketApp``'s read loop); it also sees the
  peer's close frame and a dropped connection.
- ``close`` and ``shutdown`` end the connection from this side.

A ``WebSocket`` with no ConnectionTracer (opened before ``instrument()`` or
with instrumentation suppressed) passes straight through.
"""

from __future__ import annotations

import copy
from typing import Any, Optional

from wstrace._close import NORMAL, as_code
from wstrace.connection import NOTHING_TO_END, ConnectionTracer
from wstrace.instrumentation._fragments import Outgoing
from wstrace.instrumentation._instrumentor import Wrapped, send_then_end
from wstrace.instrumentation.websocket_client._common import (
    CLOSING,
    OPCODE_BINARY,
    OPCODE_CLOSE,
    OPCODE_CONT,
    OPCODE_TEXT,
    SENDING,
    close_frame_args,
    close_reason_text,
    connection_lost,
    done_here,
    mark_receiver,
    tracer_of,
)


__all__ = ["close", "dispatcher_read", "finished", "recv_data_frame", "send_frame", "shutdown"]

_DATA = (OPCODE_TEXT, OPCODE_BINARY)


def send_frame(wrapped: Wrapped, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    ct = tracer_of(instance)
    frame: Any = args[0] if args else kwargs.get("frame")
    opcode = getattr(frame, "opcode", None)
    if ct is None:
        return wrapped(*args, **kwargs)
    if opcode == OPCODE_CONT:
        return _continuation(instance, frame, wrapped, args, kwargs)
    # Control frames pass unchanged (they may come between a fragmented message's frames).
    if opcode not in _DATA:
        return wrapped(*args, **kwargs)
    text = opcode == OPCODE_TEXT
    payload = frame.data
    if not text and isinstance(payload, str):
        # The library turns a str in a binary frame into bytes this way (masked
        # client frames: latin-1); doing the same keeps the bytes on the wire.
        try:
            payload = payload.encode("latin-1" if getattr(frame, "mask_value", 1) else "utf-8")
        except UnicodeEncodeError:
            return wrapped(*args, **kwargs)  # the library raises its own error
    finished(instance)  # a fragmented message left without its last frame: a new message starts
    out: Optional[Outgoing] = None
    if getattr(frame, "fin", 1):
        wire, handle = ct.send_start(payload, text=text)
    else:
        # The first frame of a fragmented message: its envelope goes here; its span ends with its last frame.
        out = Outgoing(ct, text, split=False)
        (wire,) = out.first(payload)
        handle = NOTHING_TO_END
    if wire is not frame.data:
        # A copy: the application may send the same frame object again.
        frame = copy.copy(frame)
        frame.data = wire
        if args:
            args = (frame, *args[1:])
        else:
            kwargs["frame"] = frame
    if out is None:
        return send_then_end(ct, handle, wrapped, args, kwargs)
    try:
        result = wrapped(*args, **kwargs)
    except BaseException as exc:
        out.end(exc)
        raise
    setattr(instance, SENDING, out)
    return result


def _continuation(instance: Any, frame: Any, wrapped: Wrapped, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """A continuation frame goes unchanged; it counts towards its message, which ends with its last frame."""
    out: Optional[Outgoing] = getattr(instance, SENDING, None)
    if not isinstance(out, Outgoing):
        return wrapped(*args, **kwargs)
    out.more(frame.data)
    if getattr(frame, "fin", 1):
        setattr(instance, SENDING, None)
        return out.call(wrapped, args, kwargs)
    try:
        return wrapped(*args, **kwargs)
    except BaseException as exc:
        setattr(instance, SENDING, None)
        out.end(exc)
        raise


def finished(instance: Any) -> None:
    """End the fragmented message being sent, if any, as far as it went (the connection is ending, or the
    application started another message before its last frame)."""
    out: Optional[Outgoing] = getattr(instance, SENDING, None)
    if isinstance(out, Outgoing):
        setattr(instance, SENDING, None)
        out.end()


def recv_data_frame(wrapped: Wrapped, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    ct = tracer_of(instance)
    if ct is None:
        return wrapped(*args, **kwargs)
    ct.receive_done()  # the application asks for the next message: the last one is handled
    try:
        result = wrapped(*args, **kwargs)
    except BaseException as exc:
        if connection_lost(exc) and not getattr(instance, CLOSING, False):
            finished(instance)
            ct.closed(error=exc)  # no close frame: the TCP connection dropped
        raise
    opcode, frame = result
    if opcode in _DATA:
        _strip(instance, ct, opcode, frame)
    elif opcode == OPCODE_CLOSE:
        # The peer's close frame: the answer to ours, if another thread's close() is waiting for it,
        # or else one that the library has already answered (send_close).
        ct.close_received(*close_frame_args(frame.data))
        finished(instance)
        ct.closed()
    return result


def _strip(instance: Any, ct: ConnectionTracer, opcode: int, frame: Any) -> None:
    """Strip the envelope from a data frame in place and start its receive span."""
    if ct.envelope is None and not ct.recording:
        return  # nothing to strip and nothing to record
    data = frame.data
    mark_receiver(instance)
    # Text frames come back as UTF-8 bytes (recv() decodes them later), so the frame type is passed.
    payload = ct.received(data, text=opcode == OPCODE_TEXT)
    if payload is not data:
        frame.data = payload


def close(wrapped: Wrapped, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    ct = tracer_of(instance)
    if ct is None:
        return wrapped(*args, **kwargs)
    done_here(instance, ct)
    finished(instance)
    was_open = bool(getattr(instance, "connected", False))  # close() returns at once on a closed connection
    if was_open:
        status = args[0] if args else kwargs.get("status", NORMAL)  # the library's default
        reason = close_reason_text(args[1] if len(args) > 1 else kwargs.get("reason", b""))
        ct.close_sent(as_code(status), reason)
    setattr(instance, CLOSING, True)
    try:
        result = wrapped(*args, **kwargs)
    finally:
        setattr(instance, CLOSING, False)
    if was_open:
        answer = getattr(instance, "close_frame", None)
        if answer is not None:
            ct.close_received(*close_frame_args(answer.data))
        ct.closed()  # without an answer: the peer never answered our close frame (timeout or dropped TCP)
    return result


def shutdown(wrapped: Wrapped, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    ct = tracer_of(instance)
    if ct is None or getattr(instance, CLOSING, False):
        return wrapped(*args, **kwargs)  # close() calls shutdown() and records the close itself
    was_open = getattr(instance, "sock", None) is not None
    try:
        return wrapped(*args, **kwargs)
    finally:
        if was_open:
            # The socket closed with no closing handshake (shutdown() without close(),
            # or WebSocketApp dropping the old socket to reconnect).
            done_here(instance, ct)
            finished(instance)
            ct.closed()


def dispatcher_read(wrapped: Wrapped, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``WebSocketApp``: end each receive span when its read step (``on_data``, ``on_message``) returns.

    The step runs in the dispatcher's thread, right after ``recv_data_frame``
    attached the receive span there, so the callbacks see it current; ending
    it at the next ``recv_data_frame`` instead would count the idle wait for
    the next frame as handling.
    """
    ws = getattr(getattr(instance, "app", None), "sock", None)
    ct = tracer_of(ws)
    read_callback = args[1] if len(args) > 1 else kwargs.get("read_callback")
    if ct is None or read_callback is None:
        return wrapped(*args, **kwargs)

    def read_step() -> Any:
        try:
            return read_callback()
        finally:
            ct.receive_done()  # same thread as the receive: the step ran here

    if len(args) > 1:
        args = (args[0], read_step, *args[2:])
    else:
        kwargs["read_callback"] = read_step
    return wrapped(*args, **kwargs)
