"""Server handshakes: extract context, answer the envelope offer, report the 101.

tornado runs a ``WebSocketHandler``'s whole connection in the task of its
request: ``get`` validates the upgrade, ``WebSocketProtocol13._accept_connection``
writes the 101, detaches the stream, awaits ``open`` and then reads frames until
the connection ends. So the handshake span is current from ``get`` until the
101 is out and, in the ``connection`` model, the connection span replaces it
for ``open``, ``on_message`` and ``on_close``.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from wstrace.instrumentation._instrumentor import Settings, Wrapper, engineio_request, is_instrumentation_enabled
from wstrace.instrumentation.tornado._common import (
    ATTR,
    Traced,
    hide_subprotocol_tokens,
    new_server_tracer,
    traced,
)
from wstrace.instrumentation.tornado._limits import raise_limit


__all__ = ["accept_connection", "detach_stream", "get"]


def _engineio(handler: Any) -> bool:
    """An engine.io connection (python-socketio's tornado mount), which the Socket.IO adapter traces."""
    return engineio_request(getattr(getattr(handler, "request", None), "query", ""))


def get(settings: Settings) -> Wrapper:
    """``WebSocketHandler.get``: the upgrade request has arrived; it returns when the connection is over."""

    async def wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if not is_instrumentation_enabled() or traced(instance) is not None or _engineio(instance):
            return await wrapped(*args, **kwargs)
        t = Traced(new_server_tracer(settings, instance), loop_delivers=True)
        setattr(instance, ATTR, t)
        # check_origin, select_subprotocol and get_compression_options run inside the handshake span.
        t.enter(t.ct.handshake_context)
        error: Optional[BaseException] = None
        try:
            return await wrapped(*args, **kwargs)
        except BaseException as exc:
            error = exc
            raise
        finally:
            t.leave()
            if t.opened:
                # Normally recorded when the frame loop ends; tornado skips the
                # loop (and on_close) when open() raises, so end it here too.
                t.ct.closed()
            elif not t.settled:
                t.settled = True
                status = instance.get_status()
                # 400, 403 and 426 are tornado's refusals; 200 or 101 here means it gave up without one.
                t.ct.handshake_failed(status=None if status in (101, 200) else status, error=error)

    return wrapper


async def accept_connection(
    wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``WebSocketProtocol13._accept_connection``: the request is a valid upgrade; the 101 follows."""
    handler = args[0] if args else kwargs["handler"]
    t = traced(handler)
    if t is not None and not t.settled:
        hide_subprotocol_tokens(handler)
        for name, value in t.ct.response_headers().items():
            handler.set_header(name, value)
    return await wrapped(*args, **kwargs)


def detach_stream(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``WebSocketHandler._detach_stream``: called after the 101 is written and before ``open``."""
    stream = wrapped(*args, **kwargs)
    t = traced(instance)
    if t is not None and not t.settled:
        t.settled = t.opened = True
        protocol = instance.ws_connection
        subprotocol = protocol.selected_subprotocol if protocol is not None else None
        # The headers as sent: an answer a hook removed is not in force.
        t.ct.opened(response_headers=instance._headers, subprotocol=subprotocol)
        raise_limit(t, protocol)
        t.enter(t.ct.connection_context)
    return stream
