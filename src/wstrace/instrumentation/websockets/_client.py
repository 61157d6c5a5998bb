"""Client handshakes, asyncio and sync: inject context, offer the envelope, read the answer."""

from __future__ import annotations

from typing import Any, Callable

from wstrace.instrumentation._instrumentor import Settings, is_instrumentation_enabled
from wstrace.instrumentation.websockets._common import (
    ATTR,
    handshake_status,
    merged_headers,
    new_client_tracer,
)
from wstrace.instrumentation.websockets._limits import watch_client


__all__ = ["async_handshake", "sync_handshake"]

Wrapper = Callable[[Callable[..., Any], Any, tuple[Any, ...], dict[str, Any]], Any]


def _with_headers(args: tuple[Any, ...], kwargs: dict[str, Any], ours: dict[str, str]) -> tuple[Any, ...]:
    """Put our headers into the ``additional_headers`` argument, wherever it was passed."""
    if args:
        return (merged_headers(args[0], ours), *args[1:])
    kwargs["additional_headers"] = merged_headers(kwargs.get("additional_headers"), ours)
    return args


def async_handshake(settings: Settings) -> Wrapper:
    async def wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if not is_instrumentation_enabled():
            return await wrapped(*args, **kwargs)
        ct = new_client_tracer(settings, instance)
        args = _with_headers(args, kwargs, ct.request_headers())
        watch_client(instance.protocol, settings.config)
        try:
            result = await wrapped(*args, **kwargs)
        except BaseException as exc:
            ct.handshake_failed(status=handshake_status(instance), error=exc)
            raise
        ct.opened(response_headers=instance.response.headers, subprotocol=instance.subprotocol)
        setattr(instance, ATTR, ct)
        return result

    return wrapper


def sync_handshake(settings: Settings) -> Wrapper:
    def wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if not is_instrumentation_enabled():
            return wrapped(*args, **kwargs)
        ct = new_client_tracer(settings, instance)
        args = _with_headers(args, kwargs, ct.request_headers())
        watch_client(instance.protocol, settings.config)
        try:
            result = wrapped(*args, **kwargs)
        except BaseException as exc:
            ct.handshake_failed(status=handshake_status(instance), error=exc)
            raise
        ct.opened(response_headers=instance.response.headers, subprotocol=instance.subprotocol)
        setattr(instance, ATTR, ct)
        return result

    return wrapper
