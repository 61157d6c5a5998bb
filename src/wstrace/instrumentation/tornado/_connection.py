"""Message and close wrappers, on ``WebSocketProtocol13`` (both sides) and the client connection.

The application's ``on_message`` is overridden in every ``WebSocketHandler``
subclass, so it cannot be wrapped on the class: the wrappers sit where tornado
calls it instead. The frame loop, one task per connection, runs
``_receive_frame`` for each frame; ``_handle_message`` dispatches a complete
one and passes data to ``on_message`` through ``_run_callback``, which runs a
coroutine ``on_message`` as a task of its own and returns a future that the
loop awaits. Only ``_run_callback`` and ``write_message`` are wrapped on the
per-message path: every wrapper there costs each message a call.

Each wrapper finds the connection's :class:`Traced` through the protocol's
``handler``; a connection opened before ``instrument()`` (or with
instrumentation suppressed) has none and passes straight through.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any, Awaitable, Callable, Generator, Optional

from wstrace._close import NORMAL
from wstrace.connection import ConnectionTracer
from wstrace.instrumentation._instrumentor import Wrapped, send_then_end
from wstrace.instrumentation.tornado._common import Traced, traced
from wstrace.instrumentation.tornado._limits import refused


__all__ = [
    "client_close",
    "protocol_close",
    "read_message",
    "receive_frame_loop",
    "run_callback",
    "write_message",
]


def write_message(wrapped: Wrapped, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``WebSocketProtocol13.write_message(message, binary=False)``, under both sides' ``write_message``."""
    t = traced(instance.handler)
    if t is None:
        return wrapped(*args, **kwargs)
    message = args[0] if args else kwargs.get("message")
    binary = args[1] if len(args) > 1 else kwargs.get("binary", False)
    if isinstance(message, dict):
        # tornado sends a dict as JSON text; encode it as tornado does, so that the envelope wraps the text.
        from tornado.escape import json_encode  # noqa: PLC0415 - only dict messages need it

        message = json_encode(message)
    if not isinstance(message, (str, bytes)):
        return wrapped(*args, **kwargs)  # tornado refuses it; its own error, unchanged
    # tornado picks the frame type from ``binary``, not from the payload's type.
    wire, handle = t.ct.send_start(message, text=not binary)
    if args:
        args = (wire, *args[1:])
    else:
        kwargs["message"] = wire
    # The frame is in the stream's buffer when this returns; the returned future only tracks the flush.
    return send_then_end(t.ct, handle, wrapped, args, kwargs)


def run_callback(wrapped: Wrapped, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``WebSocketProtocol._run_callback(callback, *args)``: the call of ``on_message`` with a data message."""
    handler = instance.handler
    t = traced(handler)
    if t is None or len(args) != 2 or kwargs or args[0] != handler.on_message:
        return wrapped(*args, **kwargs)  # not a data message
    if t.limit is not None and refused(t, instance, args[1]):
        return None  # over the application's limit: closed as tornado closes it, and not delivered
    if not t.loop_delivers:
        return wrapped(*args, **kwargs)  # a client whose messages wait for read_message
    ct = t.ct
    _end_loop_receive(t)
    payload = ct.received(args[1])
    result = wrapped(_watched(t, args[0]), payload)
    if result is None:
        ct.receive_done(_failure(t))  # on_message returned (or raised, which tornado logs)
        return None
    # A coroutine: its task copied the context with the receive span. The frame
    # loop awaits what we return, so the span ends in the task that attached it.
    t.loop_receive = True
    return _end_when_handled(t, instance, result)


async def _end_when_handled(t: Traced, protocol: Any, handled: Awaitable[Any]) -> None:
    try:
        await handled
    finally:
        stream = protocol.stream
        if t.failure is None and (stream is None or stream.closed()):
            # The connection went while the handler ran (it may have swallowed the failed write): the
            # close is reported first, so the replies it cut short end as failures, not as complete.
            # A handler that raised keeps its own error on the receive span; the close follows.
            t.ct.closed()
        _end_loop_receive(t)


def _end_loop_receive(t: Traced) -> None:
    if t.loop_receive:
        t.loop_receive = False
        t.ct.receive_done(_failure(t))


def _failure(t: Traced) -> Optional[BaseException]:
    failure, t.failure = t.failure, None  # taken once: the exception holds the handler's frames
    return failure


def _watched(t: Traced, on_message: Callable[..., Any]) -> Callable[..., Any]:
    """``on_message``, noting what it raises (synchronously, or from its coroutine) for the receive span.

    tornado's ``_run_callback`` logs the exception and aborts the connection, but never re-raises it.
    """

    def call(message: Any) -> Any:
        try:
            result = on_message(message)
        except BaseException as exc:
            t.failure = exc
            raise
        if result is None:
            return None
        if asyncio.isfuture(result):
            # A @gen.coroutine's Future: watched by a callback. A task around it would be one more for a
            # teardown to cancel, after the Future finished: tornado would log that CancelledError and abort.
            result.add_done_callback(lambda future: _note(t, future))
            return result
        return _note_failure(t, result) if inspect.isawaitable(result) else result

    return call


def _note(t: Traced, future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        t.failure = future.exception()


async def _note_failure(t: Traced, awaitable: Awaitable[Any]) -> Any:
    """A coroutine ``on_message``, awaited by the one task tornado makes of it."""
    try:
        return await awaitable
    except BaseException as exc:
        t.failure = exc
        raise


async def receive_frame_loop(wrapped: Wrapped, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``WebSocketProtocol13._receive_frame_loop``: it ends when the connection does, after ``on_close``."""
    try:
        return await wrapped(*args, **kwargs)
    finally:
        t = traced(instance.handler)
        if t is not None:
            _end_loop_receive(t)
            t.ct.closed()


def protocol_close(wrapped: Wrapped, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``WebSocketProtocol13.close(code, reason)``: notes the close frame this end sends.

    tornado calls it for the application's ``close``, for its own reasons (ping
    timeout, message too big), to echo the peer's close, and to abort.
    """
    t = traced(instance.handler)
    stream = instance.stream
    # With the stream still open: an abort closes the stream first, and sends nothing.
    if t is not None and stream is not None and not stream.closed():
        if instance.client_terminated:
            # A close frame from the peer, which tornado is echoing. Noted here, not by wrapping
            # _handle_message, which every frame goes through.
            t.ct.close_received(instance.close_code, instance.close_reason or "")
        if not instance.server_terminated:
            code = args[0] if args else kwargs.get("code")
            reason = args[1] if len(args) > 1 else kwargs.get("reason")
            if code is None and reason is not None:
                code = NORMAL  # as tornado does
            t.ct.close_sent(code, reason or "")
    return wrapped(*args, **kwargs)


def client_close(wrapped: Wrapped, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``WebSocketClientConnection.close``: the application is done with the message it read."""
    t = traced(instance)
    if t is not None and not t.loop_delivers:
        t.ct.receive_done()  # in the application's task, where read_message attached the span
    return wrapped(*args, **kwargs)


def read_message(wrapped: Wrapped, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``WebSocketClientConnection.read_message(callback=None)``: the next message from the queue."""
    t = traced(instance)
    if t is None or t.loop_delivers:
        return wrapped(*args, **kwargs)
    callback = args[0] if args else kwargs.get("callback")
    t.ct.receive_done()
    message = _Message(t.ct, asyncio.ensure_future(wrapped()))
    if callback is not None:
        instance.io_loop.add_future(message, callback)
    return message


class _Message(asyncio.Future[Any]):
    """What ``read_message`` returns: a future of the application's payload.

    The envelope is stripped, and the receive span started and attached, the
    first time the result is read. Awaiting it reads the result in the
    awaiting task (its wake-up and its resumption both run there), so the
    span is current where the application handles the message. It stays a
    real future, for ``asyncio.wait``, callbacks and ``result()``.
    """

    def __init__(self, ct: ConnectionTracer, source: asyncio.Future[Any]) -> None:
        super().__init__(loop=source.get_loop())
        self._ct = ct
        self._source = source
        self._delivered = False
        self._payload: Any = None
        source.add_done_callback(self._copy)
        self.add_done_callback(self._cancel_source)

    def _copy(self, source: asyncio.Future[Any]) -> None:
        if self.done():
            return
        if source.cancelled():
            self.cancel()
            return
        error = source.exception()
        if error is not None:
            self.set_exception(error)
        else:
            super().set_result(source.result())

    def _cancel_source(self, _: asyncio.Future[Any]) -> None:
        # A cancelled read must not take the next message off the queue.
        if self.cancelled():
            self._source.cancel()

    def result(self) -> Any:
        wire = super().result()
        if not self._delivered:
            self._delivered = True
            # None: the connection closed; it is not a message.
            self._payload = None if wire is None else self._ct.received(wire)
        return self._payload

    def __await__(self) -> Generator[Any, None, Any]:
        # asyncio.Future.__await__, reading the result through our result().
        if not self.done():
            self._asyncio_future_blocking = True
            yield self
        if not self.done():
            raise RuntimeError("await wasn't used with future")
        return self.result()

    __iter__ = __await__
