"""Client handshakes, asyncio and sync: inject context, offer the envelope, read the answer."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

from wstrace.instrumentation._instrumentor import Settings, Wrapper
from wstrace.instrumentation.websockets._common import (
    ATTR,
    Arguments,
    async_handshake_wrapper,
    handshake_status,
    merged_headers,
    new_client_tracer,
    sync_handshake_wrapper,
)
from wstrace.instrumentation.websockets._limits import watch_client


__all__ = ["async_handshake", "sync_handshake"]


def _with_headers(args: tuple[Any, ...], kwargs: dict[str, Any], ours: dict[str, str]) -> tuple[Any, ...]:
    """Put our headers into the ``additional_headers`` argument, wherever it was passed."""
    if args:
        return (merged_headers(args[0], ours), *args[1:])
    kwargs["additional_headers"] = merged_headers(kwargs.get("additional_headers"), ours)
    return args


@contextmanager
def _steps(settings: Settings, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Iterator[Arguments]:
    """Our headers into the request, then the handshake's outcome: the connection opened, or failed."""
    ct = new_client_tracer(settings, instance)
    args = _with_headers(args, kwargs, ct.request_headers())
    watch_client(instance.protocol, settings.config)
    try:
        yield args, kwargs
    except BaseException as exc:
        ct.handshake_failed(status=handshake_status(instance), error=exc)
        raise
    ct.opened(response_headers=instance.response.headers, subprotocol=instance.subprotocol)
    setattr(instance, ATTR, ct)


def async_handshake(settings: Settings) -> Wrapper:
    return async_handshake_wrapper(settings, _steps)


def sync_handshake(settings: Settings) -> Wrapper:
    return sync_handshake_wrapper(settings, _steps)
