"""The consumer side: the ASGI middleware around Channels' routers, route templates, and handler contexts.

Three things Channels does differently from Starlette, and what this module does about each:

* **Routing** happens in ``URLRouter``, which copies the scope for the consumer and records no route in
  it. The middleware puts a list under :data:`ROUTE_KEY` in its scope; each ``URLRouter`` on the way
  (nested ones too) appends the pattern it matched, and the handshake span, which starts when the consumer
  takes ``websocket.connect`` (after routing), is named after their concatenation, as Django names a
  resolved route (``ws/chat/<str:room>/``, or the regular expression of a ``re_path``).
* **Handlers run in another task** than the one that received their message: a consumer awaits its ASGI
  ``receive`` and its channel layer's ``receive`` in tasks of their own (``await_many_dispatch``) and
  dispatches in its own. The receive span the ASGI layer attaches in the receiving task is handed off
  (:meth:`~wstrace.connection.ConnectionTracer.hand_off`) and attached around the dispatch of that
  message, so the handler, its replies and its database calls belong to the message's trace.
* **Channel-layer events** are dispatched like messages: each gets a ``process`` span around its handler
  (``wstrace.instrumentation.channels._layers``), and what the handler sends to its WebSocket follows it.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from typing import Any, Callable, Mapping, Optional

from opentelemetry.context import Context

from wstrace._context import attach
from wstrace._log import warn_once
from wstrace.instrumentation._instrumentor import Settings, Switch, Wrapper
from wstrace.instrumentation.asgi import WstraceASGIMiddleware
from wstrace.instrumentation.asgi._common import MARK, Message, Receive, Scope, Send
from wstrace.instrumentation.asgi._connection import Connection
from wstrace.instrumentation.asgi._server import Handshake
from wstrace.instrumentation.channels._layers import Layers


__all__ = [
    "ROUTE_KEY",
    "ChannelsMiddleware",
    "Handoff",
    "Switch",
    "dispatch_patch",
    "join_route",
    "protocol_router_wrapper",
    "url_router_wrapper",
]


ROUTE_KEY = "wstrace.channels.route"
"""Scope key of the list of patterns the routers matched, outermost first."""

_log = logging.getLogger("wstrace.instrumentation.channels")


class _Named:
    """What ``route_template`` reads from ``scope["route"]``: the template as ``path``."""

    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path


def join_route(parts: list[str]) -> Optional[str]:
    """The patterns matched, joined as Django joins a resolved route (a later regex loses its ``^``)."""
    if not parts:
        return None
    route = parts[0]
    for part in parts[1:]:
        route += part[1:] if part.startswith("^") else part
    return route or None


class RoutedHandshake(Handshake):
    """A handshake whose route comes from Channels' routers (:data:`ROUTE_KEY`)."""

    __slots__ = ()

    def __init__(self, settings: Settings, scope: Scope, *args: Any, **kwargs: Any) -> None:
        super().__init__(settings, scope, *args, **kwargs)
        scope[ROUTE_KEY] = []  # the middleware's own copy of the scope; routers copy it on

    def _start(self) -> Any:
        scope = self.scope
        parts = scope.get(ROUTE_KEY)
        template = join_route(parts) if isinstance(parts, list) else None
        named = template is not None and "route" not in scope
        if named:
            # Routers copied the scope before this: the consumer never sees this key.
            scope["route"] = _Named(template)  # type: ignore[arg-type]
        try:
            return super()._start()
        finally:
            if named:
                scope.pop("route", None)


class Handoff:
    """The message a consumer's receiving task just got, with its context, for the dispatching task."""

    __slots__ = ("ctx", "message")

    def __init__(self) -> None:
        self.message: Optional[Message] = None
        self.ctx: Optional[Context] = None

    def take(self, message: Any) -> Optional[Context]:
        if self.message is not message:
            return None
        ctx = self.ctx
        self.message = self.ctx = None
        return ctx


_HANDOFF: ContextVar[Optional[Handoff]] = ContextVar("wstrace.channels.handoff", default=None)
"""The handoff of the connection the current task serves (set by the middleware, read by the dispatch wrapper)."""


class HandingOff(Connection):
    """An ASGI connection whose receive spans are handed to the consumer's dispatching task."""

    __slots__ = ("_handoff",)

    def __init__(self, handshake: Handshake, receive: Receive, send: Send) -> None:
        super().__init__(handshake, receive, send)
        self._handoff = Handoff()

    async def run(self, app: Any) -> None:
        token = _HANDOFF.set(self._handoff)
        try:
            await super().run(app)
        finally:
            _HANDOFF.reset(token)

    async def receive(self) -> Message:
        message = await super().receive()
        if message.get("type") == "websocket.receive":
            ct = self._hs.ct
            if ct is not None:
                ctx = ct.hand_off()
                if ctx is not None:
                    handoff = self._handoff
                    handoff.message, handoff.ctx = message, ctx
        return message


class ChannelsMiddleware(WstraceASGIMiddleware):
    """The ASGI middleware with Channels' route templates and handler contexts."""

    _handshake_type = RoutedHandshake
    _connection_type = HandingOff


def _traced_here(scope: Any) -> bool:
    return isinstance(scope, Mapping) and scope.get("type") == "websocket" and MARK not in scope


def protocol_router_wrapper(settings: Settings, switch: Switch) -> Wrapper:
    """Wrap ``ProtocolTypeRouter.__call__``: a WebSocket connection goes through the middleware.

    The wrapper is a plain function returning the awaitable, so that a call with the wrong arguments
    raises ``TypeError`` at once, as the original does (uvicorn probes for an app factory that way).
    """

    def wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if not switch.on or len(args) != 3 or kwargs or not _traced_here(args[0]):
            return wrapped(*args, **kwargs)
        return ChannelsMiddleware._installed(wrapped, settings, switch)(*args)

    return wrapper


def _record(router: Any, scope: Any) -> None:
    """Append the pattern ``router`` matches for this scope to the scope's route list, as ``URLRouter`` matches."""
    try:
        parts = scope.get(ROUTE_KEY)
        if not isinstance(parts, list):
            return
        path = scope.get("path_remaining", scope.get("path"))
        if not isinstance(path, str):
            return
        if "path_remaining" not in scope:
            root_path = scope.get("root_path") or ""
            if root_path:
                if not path.startswith(root_path):
                    return
                path = path[len(root_path) :]
        path = path.lstrip("/")
        for route in getattr(router, "routes", ()):
            try:
                match = route.pattern.match(path)
            except Exception:  # Resolver404 and the like: URLRouter skips the route too
                continue
            if match:
                parts.append(str(route.pattern))
                return
    except Exception as exc:
        warn_once("naming a Channels route", exc, logger=_log)


def url_router_wrapper(settings: Settings, switch: Switch) -> Wrapper:
    """Wrap ``URLRouter.__call__``: record the matched pattern; as the outermost application, also add the
    middleware (an ``application`` that is a ``URLRouter`` with no ``ProtocolTypeRouter`` around it)."""

    def wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if not switch.on or len(args) != 3 or kwargs:
            return wrapped(*args, **kwargs)
        scope = args[0]
        if not isinstance(scope, Mapping) or scope.get("type") != "websocket":
            return wrapped(*args)
        if MARK not in scope and "path_remaining" not in scope:

            async def routed(inner: Scope, receive: Receive, send: Send) -> None:
                _record(instance, inner)
                await wrapped(inner, receive, send)

            return ChannelsMiddleware._installed(routed, settings, switch)(*args)
        _record(instance, scope)
        return wrapped(*args)

    return wrapper


def dispatch_patch(
    layers: Layers, switch: Switch, stop: tuple[type[BaseException], ...]
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """In place of ``channels.consumer.await_many_dispatch``, a function with its signature that hands it a
    ``dispatch`` dispatching each message in its context.

    A WebSocket message in the receive span the ASGI layer started for it; a channel-layer event in a
    ``process`` span continuing its sender's context (or the span of another handler call of the same group
    message, with ``group_spans="first"``), with the carrier removed. ``stop``: exceptions that end a consumer
    normally (``StopConsumer``), not recorded as errors. A plain function, not a ``wrapt`` wrapper, and one
    coroutine per message (``traced``) around the consumer's own ``dispatch``: the only layer a handler call
    goes through.
    """

    def make(original: Callable[..., Any]) -> Callable[..., Any]:
        async def await_many_dispatch(consumer_callables: Any, dispatch: Any) -> Any:
            if not switch.on:
                return await original(consumer_callables, dispatch)
            handoff = _HANDOFF.get()
            layer_open = layers.open

            async def traced(message: Any) -> Any:
                if handoff is not None:
                    ctx = handoff.take(message)
                    if ctx is not None:
                        attachment = attach(ctx)
                        del ctx
                        try:
                            return await dispatch(message)
                        finally:
                            attachment.detach()
                event, handling = layer_open(message)
                if handling is None:
                    return await dispatch(event)
                try:
                    return await dispatch(event)
                except Exception as exc:
                    if not isinstance(exc, stop):
                        handling.fail(exc)
                    raise
                finally:
                    handling.finish()

            return await original(consumer_callables, traced)

        return await_many_dispatch

    return make
