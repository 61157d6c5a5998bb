"""Server handshakes, asyncio and sync: extract context, answer the envelope offer.

The handshake span starts inside ``process_request`` (when the upgrade
request has arrived) and is current while the application's own
``process_request`` and ``process_response`` run. A server whose
``process_request`` is a :class:`ServerOptions` is traced with its own options.

The wrappers are on the connection classes, not on ``serve()``: websockets calls
``handshake`` for every connection it accepts, so servers started before
``instrument()`` trace the connections they accept afterwards.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from typing import Any, Awaitable, Callable, Iterator, Optional

from opentelemetry.context import Context

from wstrace._context import attach
from wstrace.connection import ConnectionTracer
from wstrace.instrumentation._instrumentor import Settings, Wrapper
from wstrace.instrumentation.websockets._common import (
    ATTR,
    HANDSHAKE,
    Arguments,
    add_response_headers,
    async_handshake_wrapper,
    attach_for_handler,
    drop_negotiation_headers,
    handshake_status,
    new_server_tracer,
    report_close,
    sync_handshake_wrapper,
)
from wstrace.instrumentation.websockets._limits import watch_server
from wstrace.instrumentation.websockets._options import ServerOptions


__all__ = ["async_handshake", "sync_handshake"]


def _call_in(ctx: Context, hook: Optional[Callable[..., Any]], *args: Any) -> Any:
    """Call an application hook with ``ctx`` current, for sync and async hooks alike."""
    if hook is None:
        return None
    attachment = attach(ctx)
    try:
        result = hook(*args)
    finally:
        attachment.detach()
    if inspect.isawaitable(result):
        return _await_in(ctx, result)
    return result


async def _await_in(ctx: Context, awaitable: Awaitable[Any]) -> Any:
    attachment = attach(ctx)
    try:
        return await awaitable
    finally:
        attachment.detach()


def _hooks(settings: Settings, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Replace ``process_request`` and ``process_response`` with ours, which call the originals."""
    names = ("process_request", "process_response")
    given = list(args[:2]) + [None] * (2 - len(args[:2]))
    for i, name in enumerate(names):
        if name in kwargs:
            given[i] = kwargs.pop(name)
    user_request, user_response = given
    if isinstance(user_request, ServerOptions):  # this server has options of its own
        settings = user_request.settings(settings)
        user_request = user_request.hook

    def process_request(connection: Any, request: Any) -> Any:
        ct = new_server_tracer(settings, connection, request)
        setattr(connection, HANDSHAKE, ct)
        watch_server(connection.protocol, settings.config)
        return _call_in(ct.handshake_context, user_request, connection, request)

    def process_response(connection: Any, request: Any, response: Any) -> Any:
        ct = handshake_of(connection)
        if ct is None:
            return user_response(connection, request, response) if user_response else None
        add_response_headers(connection, ct, response)
        return _call_in(ct.handshake_context, user_response, connection, request, response)

    return (process_request, process_response, *args[2:]), kwargs


def handshake_of(connection: Any) -> Optional[ConnectionTracer]:
    return getattr(connection, HANDSHAKE, None)


def _finish(instance: Any) -> None:
    ct = handshake_of(instance)
    if ct is None:
        return
    delattr(instance, HANDSHAKE)
    response = instance.response
    if response is not None and response.status_code == 101 and instance.protocol.handshake_exc is None:
        ct.opened(response_headers=response.headers, subprotocol=instance.subprotocol)
        drop_negotiation_headers(instance.request, response)
        setattr(instance, ATTR, ct)
        attach_for_handler(ct)
        if instance.protocol.state.name == "CLOSED":
            # Lost already (a sync server's reading thread saw it before ATTR was set): recorded here.
            report_close(ct, instance)
    else:
        ct.handshake_failed(status=handshake_status(instance), error=instance.protocol.handshake_exc)


@contextmanager
def _steps(settings: Settings, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Iterator[Arguments]:
    """Our hooks in place of the application's (the handshake span starts in ``process_request``), then the
    handshake's outcome: the connection opened, or failed."""
    args, kwargs = _hooks(settings, args, kwargs)
    try:
        yield args, kwargs
    except BaseException as exc:
        ct = handshake_of(instance)
        if ct is not None:
            delattr(instance, HANDSHAKE)
            ct.handshake_failed(status=handshake_status(instance), error=exc)
        raise
    _finish(instance)


def async_handshake(settings: Settings) -> Wrapper:
    return async_handshake_wrapper(settings, _steps)


def sync_handshake(settings: Settings) -> Wrapper:
    return sync_handshake_wrapper(settings, _steps)
