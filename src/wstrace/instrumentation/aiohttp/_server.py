"""Server handshakes (``web.WebSocketResponse.prepare``): extract context, answer the envelope offer.

The handshake span starts when ``prepare`` is called with the upgrade request
and is current while it runs, so ``on_response_prepare`` signal handlers run
inside it.
"""

from __future__ import annotations

from typing import Any, Callable

from wstrace._context import attach
from wstrace.instrumentation._instrumentor import Settings, Wrapper, engineio_request, is_instrumentation_enabled
from wstrace.instrumentation.aiohttp._common import (
    ATTR,
    add_response_headers,
    failure_status,
    new_server_tracer,
    offered_subprotocols,
    server_connection_lost,
    tracer_of,
    watch_server,
)
from wstrace.instrumentation.aiohttp._limits import server_limit, settle


__all__ = ["connection_lost", "prepare"]


def prepare(settings: Settings) -> Wrapper:
    async def wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        # aiohttp calls prepare() again when the handler returns: pass through.
        if not is_instrumentation_enabled() or tracer_of(instance) is not None or instance.prepared:
            return await wrapped(*args, **kwargs)
        request = args[0] if args else kwargs.get("request")
        if engineio_request(getattr(request, "query_string", "")):  # the Socket.IO adapter traces those
            return await wrapped(*args, **kwargs)
        try:
            offered = offered_subprotocols(request)
            ct = new_server_tracer(settings, request, offered)
            add_response_headers(instance, ct, offered)
        except Exception:
            # Not a request we can read: let aiohttp deal with it, untraced.
            return await wrapped(*args, **kwargs)
        limit = server_limit(instance, settings.config)
        attachment = attach(ct.handshake_context)
        try:
            result = await wrapped(*args, **kwargs)
        except BaseException as exc:
            if limit is not None:
                instance._max_msg_size = limit.limit
            # An HTTPException is the response itself (400 for a request that
            # is no upgrade): its status says what happened, it is no failure.
            status = failure_status(exc)
            ct.handshake_failed(status=status, error=exc if status is None else None)
            raise
        finally:
            attachment.detach()
        # The headers as sent: signal handlers may have changed them.
        ct.opened(response_headers=instance.headers, subprotocol=instance.ws_protocol)
        settle(instance, limit, ct, server=True)
        setattr(instance, ATTR, ct)
        connection = ct.connection_context
        if connection is not None:
            # The handler runs in this task, which ends with the connection
            # (aiohttp disables keep-alive after an upgrade): never detached.
            attach(connection)
        watch_server(request, instance, ct)
        return result

    return wrapper


def connection_lost(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Wrap ``web_protocol.RequestHandler.connection_lost``: the server side's TCP connection ended."""
    try:
        return wrapped(*args, **kwargs)
    finally:
        exc = args[0] if args else kwargs.get("exc")
        server_connection_lost(instance, exc if isinstance(exc, BaseException) else None)
