"""Client handshakes (``ClientSession.ws_connect``): inject context, offer the envelope, read the answer."""

from __future__ import annotations

from typing import Any, Callable

from wstrace._context import attach
from wstrace.instrumentation._instrumentor import Settings, Wrapper, engineio_request, is_instrumentation_enabled
from wstrace.instrumentation.aiohttp._common import (
    ATTR,
    failure_status,
    merged_headers,
    new_client_tracer,
    on_connection_lost,
)
from wstrace.instrumentation.aiohttp._limits import client_limit, settle


__all__ = ["ws_connect"]


def _query(url: object) -> str:
    query = getattr(url, "query_string", None)  # a yarl.URL
    if isinstance(query, str):
        return query
    return str(url).partition("?")[2] if url is not None else ""


def ws_connect(settings: Settings) -> Wrapper:
    """Wrap ``ClientSession._ws_connect``, the coroutine behind ``ws_connect()`` and its context manager."""

    async def wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        url = args[0] if args else kwargs.get("url")
        if not is_instrumentation_enabled() or engineio_request(_query(url)):  # Socket.IO's: traced there
            return await wrapped(*args, **kwargs)
        try:
            ct = new_client_tracer(settings, instance, args[0] if args else kwargs.get("url"))
        except Exception:
            # A URL we cannot read: aiohttp rejects it with its own exception.
            return await wrapped(*args, **kwargs)
        kwargs["headers"] = merged_headers(kwargs.get("headers"), ct.request_headers())
        limit = client_limit(settings.config, wrapped, kwargs)
        # Current during the upgrade request, so that an HTTP client
        # instrumentation's span for it nests under the handshake span.
        attachment = attach(ct.handshake_context)
        try:
            ws = await wrapped(*args, **kwargs)
        except BaseException as exc:
            ct.handshake_failed(status=failure_status(exc), error=exc)
            raise
        finally:
            attachment.detach()
        response = getattr(ws, "_response", None)
        ct.opened(response_headers=getattr(response, "headers", ()), subprotocol=ws.protocol)
        settle(ws, limit, ct, server=False)
        setattr(ws, ATTR, ct)
        on_connection_lost(ws, ct)
        return ws

    return wrapper
