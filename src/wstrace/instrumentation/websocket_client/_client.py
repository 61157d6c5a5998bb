"""The client handshake, ``WebSocket.connect``: inject context, offer the envelope, read the 101.

``create_connection`` and ``WebSocketApp.run_forever`` both end up here, the
latter with its ``header`` callable already called.
"""

from __future__ import annotations

from typing import Any, Callable

from wstrace.instrumentation._instrumentor import Settings, Wrapper, engineio_request, is_instrumentation_enabled
from wstrace.instrumentation.websocket_client._common import (
    ATTR,
    done_here,
    handshake_status,
    merged_header,
    new_client_tracer,
    tracer_of,
)


__all__ = ["connect"]


def _query(url: Any) -> str:
    return url.partition("?")[2] if isinstance(url, str) else ""


def connect(settings: Settings) -> Wrapper:
    def wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        previous = tracer_of(instance)
        if previous is not None:
            # A WebSocket reconnected without close(): its last connection is over.
            done_here(instance, previous)
            previous.closed()
            delattr(instance, ATTR)
        url = args[0] if args else kwargs.get("url")
        if not is_instrumentation_enabled() or engineio_request(_query(url)):  # Socket.IO's: traced there
            return wrapped(*args, **kwargs)
        ct = new_client_tracer(settings, url)
        if ct is None:
            return wrapped(*args, **kwargs)
        kwargs["header"] = merged_header(kwargs.get("header"), ct.request_headers())
        try:
            result = wrapped(*args, **kwargs)
        except BaseException as exc:
            ct.handshake_failed(status=handshake_status(instance, exc), error=exc)
            raise
        response = instance.handshake_response
        ct.opened(
            response_headers=getattr(response, "headers", None) or {},
            subprotocol=getattr(response, "subprotocol", None),
        )
        setattr(instance, ATTR, ct)
        return result

    return wrapper
