"""Client handshakes: inject context, offer the envelope, read the answer from the 101.

``WebSocketClientConnection`` is wrapped rather than ``websocket_connect``, so
that applications which imported the function before ``instrument()`` are
traced too: its ``__init__`` receives the upgrade request, ``headers_received``
the 101, and ``_on_http_response`` every failure (refused connection, timeout,
a status other than 101).
"""

from __future__ import annotations

from typing import Any, Callable

from wstrace.instrumentation._instrumentor import Settings, Wrapper, is_instrumentation_enabled
from wstrace.instrumentation.tornado._common import (
    ATTR,
    Traced,
    add_request_headers,
    new_client_tracer,
    traced,
)
from wstrace.instrumentation.tornado._limits import raise_limit


__all__ = ["connection_init", "headers_received", "on_http_response"]


def connection_init(settings: Settings, default_on_message: Callable[..., Any]) -> Wrapper:
    """``WebSocketClientConnection.__init__``: it receives the request before sending it."""

    def wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        request = args[0] if args else kwargs.get("request")
        if request is None or not is_instrumentation_enabled():
            return wrapped(*args, **kwargs)
        ct = new_client_tracer(settings, request)
        add_request_headers(request, ct.request_headers())
        try:
            result = wrapped(*args, **kwargs)
        except BaseException as exc:
            ct.handshake_failed(error=exc)
            raise
        # A callback, or a subclass overriding on_message, gets each message
        # from the frame loop; otherwise it waits in the queue for read_message.
        delivers = instance._on_message_callback is not None or type(instance).on_message is not default_on_message
        setattr(instance, ATTR, Traced(ct, loop_delivers=delivers))
        return result

    return wrapper


async def headers_received(
    wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``WebSocketClientConnection.headers_received``: the response's status line and headers."""
    t = traced(instance)
    start_line = args[0] if args else kwargs.get("start_line")
    if t is None or t.settled or getattr(start_line, "code", None) != 101:
        return await wrapped(*args, **kwargs)  # other statuses fail in _on_http_response
    try:
        result = await wrapped(*args, **kwargs)
    except BaseException as exc:  # a 101 that tornado rejects (bad accept key, unknown extension)
        t.settled = True
        t.ct.handshake_failed(status=101, error=exc)
        raise
    if instance.protocol is not None:
        # Before the application gets the connection and before the frame loop
        # runs (it is only scheduled), so no frame is ever handled unstripped.
        t.settled = t.opened = True
        headers = args[1] if len(args) > 1 else kwargs.get("headers")
        t.ct.opened(response_headers=headers or (), subprotocol=instance.protocol.selected_subprotocol)
        raise_limit(t, instance.protocol)
    return result


def on_http_response(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``WebSocketClientConnection._on_http_response``: the handshake failed; tornado fails ``connect_future``."""
    t = traced(instance)
    if t is not None and not t.settled:
        t.settled = True
        response = args[0] if args else kwargs.get("response")
        code = getattr(response, "code", None)
        # 599 is tornado's stand-in for "no response at all" (refused, timed out, reset).
        status = code if isinstance(code, int) and code != 599 else None
        t.ct.handshake_failed(status=status, error=getattr(response, "error", None))
    return wrapped(*args, **kwargs)
