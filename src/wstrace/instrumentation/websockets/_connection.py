"""Message wrappers on ``Connection`` (asyncio and sync): send, recv, iteration, close.

Each wrapper looks up the connection's ConnectionTracer; connections opened
before ``instrument()`` (or with instrumentation suppressed) have none and
pass straight through.
"""

from __future__ import annotations

import asyncio
import sys
import types
from collections.abc import AsyncIterable, Iterable, Mapping
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator, Optional

from wstrace._close import INTERNAL_ERROR
from wstrace._wire import SPLIT_AT, Parts
from wstrace.connection import NOTHING_TO_END, ConnectionTracer, SendHandle
from wstrace.instrumentation._fragments import Outgoing, afragments, fragments
from wstrace.instrumentation._instrumentor import Wrapped, end_after, send_then_end
from wstrace.instrumentation.websockets._common import report_close, tracer_of


__all__ = [
    "async_close",
    "async_recv_method",
    "async_recv_streaming",
    "async_send_method",
    "socket_gone",
    "sync_close",
    "sync_recv",
    "sync_recv_streaming",
    "sync_send",
]

_DATA = (str, bytes, bytearray, memoryview)


def _text_flag(kwargs: dict[str, Any]) -> Any:
    return kwargs.get("text")


def _message(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return args[0] if args else kwargs.get("message")


def _type_known(args: tuple[Any, ...], kwargs: dict[str, Any], at: int = 0) -> bool:
    """Whether the returned object's type is the frame type: only without ``decode`` (argument ``at``),
    which makes websockets return text frames as bytes (``False``) or binary frames as str (``True``)."""
    return (args[at] if len(args) > at else kwargs.get("decode")) is None


def _replace_message(args: tuple[Any, ...], kwargs: dict[str, Any], message: Any) -> tuple[Any, ...]:
    if args:
        return (message, *args[1:])
    kwargs["message"] = message
    return args


def _start(ct: ConnectionTracer, message: Any, text: Optional[bool]) -> tuple[Any, SendHandle]:
    """``send_start`` for a whole message. A large one, in the framed envelope, goes as two fragments (the
    library sends a list as a fragmented message), its envelope prefix then itself, so as not to be copied
    behind the prefix."""
    if isinstance(message, _DATA):
        length = message.nbytes if type(message) is memoryview else len(message)
        if length >= SPLIT_AT and ct.envelope == "frame":
            wire, handle = ct.send_start(message, text=text, split=True)
            return (list(wire) if type(wire) is Parts else wire), handle
    return ct.send_start(message, text=text)


def async_send_method(original: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """``Connection.send`` (asyncio), written as the method itself, with its signature (no argument tuple or
    dict to build: the supported versions all have it, ``tests`` pin it): the usual call, ``send(message)`` of
    a str or bytes, takes no helper call (every chunk of a stream takes it); any other goes to
    :func:`async_send`."""

    async def send(self: Any, message: Any, *, text: Optional[bool] = None) -> Any:
        try:
            # ATTR as an attribute: a load the interpreter specializes, where getattr() is a call (a chunk's cost).
            ct = self._wstrace
        except AttributeError:
            ct = None
        if not isinstance(ct, ConnectionTracer):
            return await original(self, message, text=text)
        if text is None:
            kind = type(message)
            if (kind is str or kind is bytes) and len(message) < SPLIT_AT:
                wire, handle = ct.send_start(message)
                if handle is NOTHING_TO_END:
                    return await original(self, wire)
                return await end_after(ct, handle, original(self, wire))
            return await async_send(types.MethodType(original, self), ct, (message,), {})
        return await async_send(types.MethodType(original, self), ct, (message,), {"text": text})

    return send


def async_send(wrapped: Wrapped, ct: ConnectionTracer, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Any other send: fragments, a large message, keyword arguments."""
    message = _message(args, kwargs)
    if not isinstance(message, _DATA) and _fragmented(message):
        # Fragments, sent as the library pulls them: one message, enveloped as a whole.
        out = Outgoing(ct, _text_flag(kwargs))
        parts = fragments(out, message) if isinstance(message, Iterable) else afragments(out, message)
        return out.after(wrapped(*_replace_message(args, kwargs, parts), **kwargs))
    wire, handle = _start(ct, message, _text_flag(kwargs))
    sending = wrapped(*_replace_message(args, kwargs, wire), **kwargs)
    if type(wire) is list:
        sending = _to_the_end(sending)
    if handle is NOTHING_TO_END:
        return sending
    return end_after(ct, handle, sending)


async def _to_the_end(sending: Awaitable[Any]) -> Any:
    """A message split in two fragments is sent to its end even if the caller is cancelled meanwhile.

    websockets writes a whole message's one frame before its send can be cancelled (while it waits for the
    write buffer to drain); a fragmented message cancelled between fragments would leave the connection
    unable to send anything else. So the send runs in a task of its own, as far as its last fragment, and
    the caller's cancellation reaches only the caller, as it would have without wstrace.
    """
    task = asyncio.ensure_future(sending)
    task.add_done_callback(_retrieved)
    return await asyncio.shield(task)


def _retrieved(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # the caller may have gone: its error is the caller's, not for asyncio to log


def sync_send(wrapped: Wrapped, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    ct = tracer_of(instance)
    if ct is None:
        return wrapped(*args, **kwargs)
    message = _message(args, kwargs)
    if not isinstance(message, _DATA) and isinstance(message, Iterable) and _fragmented(message):
        # Fragments (the sync send takes no asynchronous iterable): one message, enveloped as a whole.
        out = Outgoing(ct, _text_flag(kwargs))
        return out.call(wrapped, _replace_message(args, kwargs, fragments(out, message)), kwargs)
    wire, handle = _start(ct, message, _text_flag(kwargs))
    return send_then_end(ct, handle, wrapped, _replace_message(args, kwargs, wire), kwargs)


def _fragmented(message: Any) -> bool:
    """Whether websockets sends ``message``, not a str or bytes-like object, as a fragmented message: an
    iterable (or asynchronous iterable) of fragments, but not a mapping (refused)."""
    return not isinstance(message, Mapping) and isinstance(message, (Iterable, AsyncIterable))


def async_recv_method(original: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """``Connection.recv`` (asyncio), written as the method itself, with its signature (see
    :func:`async_send_method`): an idle connection waits in it, so it holds one frame, as the library's own does."""

    async def recv(self: Any, decode: Optional[bool] = None) -> Any:
        try:
            ct = self._wstrace  # tracer_of(), written out as in send: every message takes this path
        except AttributeError:
            ct = None
        if not isinstance(ct, ConnectionTracer):
            return await original(self, decode)
        ct.receive_done()
        wire = await original(self, decode)
        # With ``decode``, websockets returns text frames as bytes or binary frames as str.
        return ct.received(wire) if decode is None else ct.received(wire, type_known=False)

    return recv


def sync_recv(wrapped: Wrapped, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    ct = tracer_of(instance)
    if ct is None:
        return wrapped(*args, **kwargs)
    ct.receive_done()
    wire = wrapped(*args, **kwargs)
    return ct.received(wire, type_known=_type_known(args, kwargs, 1))  # recv(timeout, decode)


def async_recv_streaming(wrapped: Wrapped, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    ct = tracer_of(instance)
    if ct is None:
        return wrapped(*args, **kwargs)

    known = _type_known(args, kwargs)

    async def fragments() -> AsyncIterator[Any]:
        # The envelope travels in the first fragment; the span starts with it.
        ct.receive_done()
        first = True
        async for fragment in wrapped(*args, **kwargs):
            if first:
                first = False
                fragment = ct.received(fragment, type_known=known)
            yield fragment

    return fragments()


def sync_recv_streaming(wrapped: Wrapped, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    ct = tracer_of(instance)
    if ct is None:
        return wrapped(*args, **kwargs)

    known = _type_known(args, kwargs)

    def fragments() -> Iterator[Any]:
        ct.receive_done()
        first = True
        for fragment in wrapped(*args, **kwargs):
            if first:
                first = False
                fragment = ct.received(fragment, type_known=known)
            yield fragment

    return fragments()


def _handler_error(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Optional[BaseException]:
    """The exception a server handler raised, when websockets closes with INTERNAL_ERROR because of it.

    websockets catches a failed handler's exception and calls ``close(INTERNAL_ERROR)``
    from its ``except`` block, so the exception is still being handled here:
    it belongs on the span of the message the handler was working on.
    """
    code = args[0] if args else kwargs.get("code")
    return sys.exc_info()[1] if code == INTERNAL_ERROR else None


async def async_close(wrapped: Wrapped, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    ct = tracer_of(instance)
    if ct is not None:
        ct.receive_done(_handler_error(args, kwargs))  # in the caller's context, where the receive span was attached
    return await wrapped(*args, **kwargs)


def sync_close(wrapped: Wrapped, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    ct = tracer_of(instance)
    if ct is not None:
        ct.receive_done(_handler_error(args, kwargs))
    return wrapped(*args, **kwargs)


def socket_gone(wrapped: Wrapped, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The connection's socket is gone (asyncio's ``connection_lost(exc)``, sync's ``close_socket()``): report
    its close frames and its end, with the error ``connection_lost`` was given."""
    try:
        return wrapped(*args, **kwargs)
    finally:
        ct = tracer_of(instance)
        if ct is not None:
            exc = args[0] if args else kwargs.get("exc")
            report_close(ct, instance, exc if isinstance(exc, BaseException) else None)
