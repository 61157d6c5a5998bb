"""``socketio.PubSubManager`` and ``AsyncPubSubManager`` (``RedisManager``, ``AsyncRedisManager``, ...): an emit's
context across server processes.

The emitter's process adds one key, ``"wstrace"`` (a propagator carrier), to the ``emit`` message it publishes;
every other process delivers the emit to its own clients in a PRODUCER span that continues it. A process without
wstrace reads only the keys it knows (``_handle_emit``), so the extra key changes nothing for it.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

from opentelemetry import context as otel_context
from opentelemetry.context import Context
from opentelemetry.trace import Link

from wstrace import _handshake as hs, propagation
from wstrace._log import warn_once
from wstrace._spans import link
from wstrace.instrumentation._instrumentor import Settings, is_instrumentation_enabled
from wstrace.instrumentation.socketio._common import (
    PUBSUB_KEY,
    Call,
    Pair,
    current_emit,
    emitting,
    pair,
    starting_emit,
    valid_carrier,
)
from wstrace.instrumentation.socketio._streams import streaming


__all__ = ["emit", "handle_emit", "publish"]

_EMIT_ARGS = ("event", "data", "namespace", "room", "skip_sid", "callback", "to")


def emit(settings: Settings) -> Pair:
    """Wrap the pub/sub manager's ``emit``: called outside the server's ``emit`` (a write-only manager in another
    process), it gets the emit span the server's ``emit`` would have made (without a recipient count when the
    manager has no clients)."""

    def prepare(instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Optional[Call]:
        if current_emit() is not None or kwargs.get("ignore_queue"):
            return None
        count = not getattr(instance, "write_only", False)
        # Not folded into runs: a worker or a script that emits through a write-only manager may exit (or shut
        # its tracer provider down) before a run's idle gap would end the run's span, which would be lost.
        started = starting_emit(settings, _EMIT_ARGS, args, kwargs, count=count, ack=False)
        return started[0] if started is not None else None

    return pair(prepare)


def publish(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Wrap ``<manager>._publish(data)`` (threaded and asyncio): an ``emit`` message leaves with the emit span's
    context."""
    emit_ = current_emit()
    if emit_ is not None and args:
        try:
            data = args[0]
            if isinstance(data, dict) and data.get("method") == "emit" and PUBSUB_KEY not in data:
                carrier = propagation.inject(emit_.context)
                if carrier:
                    args = ({**data, PUBSUB_KEY: carrier}, *args[1:])  # a copy: the local delivery keeps its own
        except Exception as exc:
            warn_once("adding wstrace to a Socket.IO pub/sub message", exc)
    return wrapped(*args, **kwargs)


def _parent(settings: Settings, carrier: Any) -> tuple[Optional[Context], tuple[Link, ...]]:
    if not valid_carrier(carrier):
        return None, ()  # missing, malformed or foreign: a fresh trace
    remote, remote_span = hs.remote(settings.config, carrier)
    if remote is None or remote_span is None:
        return None, ()
    if settings.config.trust == "parent":
        return remote, ()
    return Context(), (link(remote_span, "remote"),)


def _folds(settings: Settings, message: Mapping[str, Any]) -> bool:
    """Whether a delivery is a chunk of a delivered stream: streams on, the sender's context as parent, and
    neither an ack (a request) nor a binary emit (published taken apart)."""
    config = settings.config
    return (
        config.streams
        and config.message_spans
        and config.trust == "parent"
        and message.get("callback") is None
        and not message.get("binary")
    )


def _delivered(
    settings: Settings,
    manager: Any,
    parent: Context,
    message: Mapping[str, Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Call:
    """A delivery as a chunk of this process's stream of deliveries for the sender's stream span: consecutive
    emits of one sender stream (same span, event and room) are one ``send`` span here too, a run keyed by that
    span, as an emit's run is keyed by its current span."""
    token = otel_context.attach(parent)
    try:
        return streaming(
            settings,
            getattr(manager, "server", None) or manager,  # the server's runs: its disconnects end them too
            message.get("event"),
            message.get("namespace") or "/",
            message.get("room"),
            message.get("data"),
            None,
            True,
            args,
            kwargs,
        )
    finally:
        otel_context.detach(token)


def handle_emit(settings: Settings) -> Pair:
    """Wrap ``_handle_emit(message)``: a message from another process is delivered to this process's clients in a
    PRODUCER span that continues the emitter's trace (the message is passed on as it came: the library reads only
    the keys it knows)."""

    def prepare(instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Optional[Call]:
        if current_emit() is not None or not args or not is_instrumentation_enabled():
            return None  # this process's own emit: its span is current
        try:
            message = args[0]
            parent, links = _parent(settings, message.get(PUBSUB_KEY))
            event, data = message.get("event"), message.get("data")
            if parent is not None and _folds(settings, message):
                return _delivered(settings, instance, parent, message, args, kwargs)
            # The published arguments, as the clients get them; a binary emit's are published taken apart.
            plain = settings.config.message_hook is not None and isinstance(data, list) and not message.get("binary")
            return emitting(
                settings,
                event,
                message.get("namespace") or "/",
                message.get("room"),
                parent=parent if parent is not None else Context(),
                links=links,
                payload=[event, *data] if plain else None,
                args=args,
                kwargs=kwargs,
            )
        except Exception as exc:
            warn_once("starting a Socket.IO delivery span", exc)
            return None

    return pair(prepare)
