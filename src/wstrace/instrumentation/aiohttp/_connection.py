"""Message wrappers on ``ClientWebSocketResponse`` and ``web.WebSocketResponse``: send, receive, close.

Both classes have the same message API, so one set of wrappers serves both.
``send_json`` and ``send_json_bytes`` call ``send_str`` and ``send_bytes``;
``receive_str``, ``receive_bytes``, ``receive_json`` and ``async for`` call
``receive``. The wrappers look up the connection's ConnectionTracer;
connections opened before ``instrument()`` (or with instrumentation
suppressed) have none and pass straight through.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Optional

from wstrace._close import ABNORMAL, NORMAL, as_code
from wstrace.connection import NOTHING_TO_END, ConnectionTracer
from wstrace.instrumentation._instrumentor import Wrapped, end_after
from wstrace.instrumentation.aiohttp._common import (
    ATTR,
    BINARY,
    CLOSE,
    CLOSED,
    ERROR,
    LOCAL_CLOSE,
    RECEIVING,
    TEXT,
    in_receive,
    in_send,
    tracer_of,
)
from wstrace.instrumentation.aiohttp._limits import refuse


__all__ = ["METHODS", "WRAPPERS", "close", "receive_method", "send_frame", "send_method"]


def _argument(args: tuple[Any, ...], kwargs: dict[str, Any], index: int, name: str) -> Any:
    return args[index] if len(args) > index else kwargs.get(name)


def _replace(args: tuple[Any, ...], kwargs: dict[str, Any], index: int, name: str, value: Any) -> tuple[Any, ...]:
    if len(args) > index:
        return (*args[:index], value, *args[index + 1 :])
    kwargs[name] = value
    return args


async def _send(
    ct: ConnectionTracer,
    wrapped: Wrapped,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    name: str,
    text: bool,
) -> Any:
    wire, handle = ct.send_start(_argument(args, kwargs, 0, name), text=text)
    args = _replace(args, kwargs, 0, name, wire)
    token = in_send.set(True)
    try:
        return await end_after(ct, handle, wrapped(*args, **kwargs))
    finally:
        in_send.reset(token)


def send_method(text: bool) -> Callable[[Callable[..., Awaitable[Any]]], Callable[..., Awaitable[Any]]]:
    """``send_str`` (``text``) or ``send_bytes``, written as the method itself with aiohttp's signature (a test
    pins it): one frame around aiohttp's own coroutine, and no helper call for a chunk of a stream."""
    kinds: tuple[type, ...] = (str,) if text else (bytes, bytearray, memoryview)

    def make(original: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def send(self: Any, data: Any, compress: Optional[int] = None) -> Any:
            ct = getattr(self, ATTR, None)  # tracer_of(), written out
            # Anything but the method's own type is aiohttp's TypeError to raise, about the caller's own value.
            if not isinstance(ct, ConnectionTracer) or not isinstance(data, kinds) or in_send.get():
                return await original(self, data, compress)
            wire, handle = ct.send_start(data, text=text)
            token = in_send.set(True)
            try:
                if handle is NOTHING_TO_END:
                    return await original(self, wire, compress)
                return await end_after(ct, handle, original(self, wire, compress))
            finally:
                in_send.reset(token)

        return send

    return make


def send_frame(wrapped: Wrapped, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``send_frame(message, opcode)``: only TEXT and BINARY frames are messages; control frames pass."""
    ct = tracer_of(instance)
    opcode = _argument(args, kwargs, 1, "opcode")
    message = _argument(args, kwargs, 0, "message")
    if (
        ct is None
        or in_send.get()
        or opcode not in (TEXT, BINARY)
        or not isinstance(message, (bytes, bytearray, memoryview))
    ):
        return wrapped(*args, **kwargs)
    return _send(ct, wrapped, args, kwargs, "message", opcode == TEXT)


def receive_method(original: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """``receive``, written as the method itself with aiohttp's signature: an idle connection waits in one frame."""

    async def receive(self: Any, timeout: Optional[float] = None) -> Any:
        ct = getattr(self, ATTR, None)  # tracer_of(), written out
        if not isinstance(ct, ConnectionTracer) or in_receive.get():
            return await original(self, timeout)
        ct.receive_done()
        token = in_receive.set(True)
        setattr(self, RECEIVING, True)
        try:
            msg = await original(self, timeout)
            if (msg.type == TEXT or msg.type == BINARY) and refuse(self, msg.data):
                # Over the application's limit: aiohttp handles the error its reader now holds (close 1009, ERROR).
                msg = await original(self, timeout)
        except BaseException as exc:
            # A receive timeout leaves the connection open; only a closed one has ended.
            if getattr(self, "closed", False) and not getattr(self, LOCAL_CLOSE, False):
                ct.closed(error=exc)
            raise
        finally:
            setattr(self, RECEIVING, False)
            in_receive.reset(token)
        return _received(ct, self, msg)

    return receive


def _received(ct: ConnectionTracer, ws: Any, msg: Any) -> Any:
    """What ``receive()`` returned: a message (its envelope stripped), or the end of the connection."""
    kind = msg.type
    if kind == TEXT or kind == BINARY:
        payload = ct.received(msg.data, text=kind == TEXT)
        return msg if payload is msg.data else msg._replace(data=payload)
    if kind == CLOSE:
        # The peer's close frame; aiohttp has already answered it (autoclose).
        ct.close_received(msg.data, msg.extra or "")
        ct.closed()
    elif kind == CLOSED:
        # No close frame came first (it would have been returned as CLOSE):
        # the TCP connection ended, unless our own close() is under way.
        if not getattr(ws, LOCAL_CLOSE, False):
            ct.closed()
    elif kind == ERROR:
        _failed(ct, msg.data)
    return msg


def _failed(ct: ConnectionTracer, error: Any) -> None:
    """``receive()`` returned an ERROR message: the connection ended on ``error``."""
    from aiohttp.http import WebSocketError  # noqa: PLC0415 - loaded with the connection; the adapter must not import it

    if isinstance(error, WebSocketError):
        # A protocol error in the peer's frames: aiohttp sends a close frame with its code and
        # drops the connection without waiting for an answer.
        ct.close_sent(error.code)
    ct.closed(error=error if isinstance(error, BaseException) else None)


async def close(wrapped: Wrapped, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    ct = tracer_of(instance)
    if ct is None or in_receive.get():
        return await wrapped(*args, **kwargs)
    ct.receive_done()  # in the caller's context, where the receive span was attached
    setattr(instance, LOCAL_CLOSE, True)
    if not instance.closed:  # else close() returns at once, sending nothing
        ct.close_sent(as_code(kwargs.get("code", NORMAL)), _text(kwargs.get("message")))
    try:
        result = await wrapped(*args, **kwargs)
    except BaseException as exc:
        ct.closed(error=exc)
        raise
    answer = instance.close_code
    if result and answer != ABNORMAL:
        ct.close_received(answer)  # the peer's answer (aiohttp keeps its code, not its reason)
    # ABNORMAL: no answer came (a timeout, a dropped connection). Closed already, by a path that
    # returned nothing to receive() (a heartbeat timeout): recorded then, or now, with no frame.
    ct.closed(error=instance.exception() if answer == ABNORMAL or not result else None)
    return result


def _text(message: Any) -> str:
    if isinstance(message, (bytes, bytearray)):
        return bytes(message).decode("utf-8", "replace")
    return message if isinstance(message, str) else ""


WRAPPERS: dict[str, Callable[..., Any]] = {"send_frame": send_frame, "close": close}
"""Method name to wrapper, for both WebSocket classes (``send_frame`` exists since aiohttp 3.11)."""

METHODS: dict[str, Callable[[Callable[..., Awaitable[Any]]], Callable[..., Awaitable[Any]]]] = {
    "send_str": send_method(text=True),
    "send_bytes": send_method(text=False),
    "receive": receive_method,
}
"""The methods every message takes, replaced by the functions these make (see ``_instrumentor._replace``)."""
