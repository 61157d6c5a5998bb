"""``WstraceASGIMiddleware``: traces the WebSocket connections of any ASGI application."""

from __future__ import annotations

from typing import Any, Callable, Optional

from opentelemetry import context as otel_context, trace
from opentelemetry.metrics import MeterProvider

from wstrace.carriers import hide_trace_tokens
from wstrace.config import Config
from wstrace.instrumentation._instrumentor import Settings, engineio_request, is_instrumentation_enabled
from wstrace.instrumentation.asgi._common import (
    MARK,
    ASGIApp,
    Receive,
    Scope,
    Send,
    current_server_span,
    offered_subprotocols,
)
from wstrace.instrumentation.asgi._connection import Connection
from wstrace.instrumentation.asgi._server import Handshake


__all__ = ["WstraceASGIMiddleware"]


class WstraceASGIMiddleware:
    """ASGI middleware that traces ``websocket`` connections and passes everything else through.

    Args:
        app: The ASGI application to wrap.
        tracer_provider: Provider of the tracer; the global one if omitted.
        meter_provider: Provider of the meter; the global one if omitted.
        **options: :class:`~wstrace.config.Config` keywords (``model``,
            ``envelope``, ``trust``, ...); the ``WSTRACE_*`` environment fills
            in the rest. A bad keyword raises :class:`~wstrace.exceptions.ConfigError`.
    """

    _handshake_type: type[Handshake] = Handshake
    """The handshake and connection classes; a framework adapter (Django Channels) may subclass them."""
    _connection_type: type[Connection] = Connection

    def __init__(
        self,
        app: ASGIApp,
        *,
        tracer_provider: Optional[trace.TracerProvider] = None,
        meter_provider: Optional[MeterProvider] = None,
        **options: Any,
    ) -> None:
        self.app = app  # ``app``, like every ASGI middleware, so that stack walkers find what is inside
        self._settings = Settings.make(Config.load(**options), tracer_provider, meter_provider)
        self._active: Optional[Callable[[], bool]] = None

    @classmethod
    def _installed(cls, app: ASGIApp, settings: Settings, active: Callable[[], bool]) -> WstraceASGIMiddleware:
        """The middleware as an instrumentor installs it: its settings, and on only while ``active()``."""
        self = cls.__new__(cls)
        self.app = app
        self._settings = settings
        self._active = active
        return self

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "websocket"
            or MARK in scope
            or not self._enabled()
            or engineio_request(scope.get("query_string", b""))  # the Socket.IO adapter traces those
        ):
            await self.app(scope, receive, send)
            return
        offered = offered_subprotocols(scope)
        rest, echo = hide_trace_tokens(offered)
        # ASGI: a middleware copies the scope before changing it, so nothing leaks upstream.
        scope = dict(scope)
        scope[MARK] = True
        if len(rest) != len(offered):
            scope["subprotocols"] = rest
        # Another instrumentation's SERVER span may cover this request: ours goes inside it, never on it.
        outer = current_server_span()
        nested_in = outer.get_span_context() if outer is not None else None
        handshake = self._handshake_type(self._settings, scope, offered, echo, otel_context.get_current(), nested_in)
        await self._connection_type(handshake, receive, send).run(self.app)

    def _enabled(self) -> bool:
        active = self._active
        return (active is None or active()) and is_instrumentation_enabled()
