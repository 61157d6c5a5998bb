"""Message wrappers on ``Connection`` (asyncio and sync): send, recv, iteration, close.

Each wrapper looks up the connection's ConnectionTracer; connections opened
before ``instrument()`` (or with instrumentation suppressed) have none and
pass straight through.
"""

from __future__ import annotations

import sys
from typing import Any, AsyncIterator, Callable, Iterator, Optional

from wstrace._close import INTERNAL_ERROR
from wstrace.connection import NOTHING_TO_END
from wstrace.instrumentation._instrumentor import end_after, send_then_end
from wstrace.instrumentation.websockets._common import report_close, tracer_of


__all__ = [
    "async_close",
    "async_connection_lost",
    "async_recv",
    "async_recv_streaming",
    "async_send",
    "sync_close",
    "sync_close_socket",
    "sync_recv",
    "sync_recv_streaming",
    "sync_send",
]

Wrapped = Callable[..., Any]


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


def async_send(wrapped: Wrapped, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    # A plain function returning an awaitable: a stream chunk needs nothing after
    # the send, so it gets the library's own coroutine, without a second frame.
    ct = tracer_of(instance)
    if ct is None:
        return wrapped(*args, **kwargs)
    wire, handle = ct.send_start(_message(args, kwargs), text=_text_flag(kwargs))
    args = _replace_message(args, kwargs, wire)
    if handle is NOTHING_TO_END:
        return wrapped(*args, **kwargs)
    return end_after(ct, handle, wrapped(*args, **kwargs))


def sync_send(wrapped: Wrapped, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    ct = tracer_of(instance)
    if ct is None:
        return wrapped(*args, **kwargs)
    wire, handle = ct.send_start(_message(args, kwargs), text=_text_flag(kwargs))
    return send_then_end(ct, handle, wrapped, _replace_message(args, kwargs, wire), kwargs)


async def async_recv(wrapped: Wrapped, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    ct = tracer_of(instance)
    if ct is None:
        return await wrapped(*args, **kwargs)
    ct.receive_done()
    wire = await wrapped(*args, **kwargs)
    return ct.received(wire, type_known=_type_known(args, kwargs))


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


def async_connection_lost(wrapped: Wrapped, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    try:
        return wrapped(*args, **kwargs)
    finally:
        ct = tracer_of(instance)
        if ct is not None:
            exc = args[0] if args else kwargs.get("exc")
            report_close(ct, instance, exc if isinstance(exc, BaseException) else None)


def sync_close_socket(wrapped: Wrapped, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    try:
        return wrapped(*args, **kwargs)
    finally:
        ct = tracer_of(instance)
        if ct is not None:
            report_close(ct, instance)
