"""Translation between tornado's objects and core events, shared by its client and server sides."""

from __future__ import annotations

import logging
from typing import Any, Optional

from opentelemetry import trace
from opentelemetry.context import Context

from wstrace import _handshake as hs
from wstrace._context import Attachment, attach, detach
from wstrace._limits import Limit
from wstrace.carriers import hide_trace_tokens
from wstrace.connection import ConnectionTracer
from wstrace.instrumentation._instrumentor import Settings, client_tracer


__all__ = [
    "ATTR",
    "Traced",
    "add_request_headers",
    "hide_subprotocol_tokens",
    "new_client_tracer",
    "new_server_tracer",
    "traced",
]

ATTR = "_wstrace"
"""Attribute under which a ``WebSocketHandler`` or ``WebSocketClientConnection`` holds its :class:`Traced`."""

_SUBPROTOCOL = "Sec-WebSocket-Protocol"
_log = logging.getLogger(__name__)


class Traced:
    """One traced connection: its ConnectionTracer, and the state tornado does not keep for us.

    The protocol object (``WebSocketProtocol13``) reaches it through its
    ``handler``, which is the ``WebSocketHandler`` on a server and the
    ``WebSocketClientConnection`` on a client.
    """

    __slots__ = (
        "_attached",
        "ct",
        "failure",
        "limit",
        "loop_delivers",
        "loop_receive",
        "opened",
        "settled",
    )

    def __init__(self, ct: ConnectionTracer, *, loop_delivers: bool) -> None:
        self.ct = ct
        self.loop_delivers = loop_delivers
        """Whether the frame loop hands each message to application code (server ``on_message``,
        client ``on_message_callback``), rather than queueing it for ``read_message``."""
        self.loop_receive = False
        """A receive span the frame loop ends once the application's ``on_message`` coroutine is done."""
        self.settled = False
        """The handshake's outcome (``opened`` or ``handshake_failed``) has been reported."""
        self.opened = False
        self.failure: Optional[BaseException] = None
        """What the application's ``on_message`` raised (tornado logs it and never re-raises), for its span."""
        self.limit: Optional[Limit] = None
        """The application's ``max_message_size``, once tornado's was raised by the envelope's overhead."""
        self._attached: Optional[Attachment] = None

    def enter(self, ctx: Optional[Context]) -> None:
        """Make ``ctx`` current in the handler's task, in place of what this object attached before."""
        self.leave()
        # A no-op tracer's invalid span would only hide the ambient one.
        if ctx is not None and trace.get_current_span(ctx).get_span_context().is_valid:
            self._attached = attach(ctx)

    def leave(self) -> None:
        """Detach what :meth:`enter` attached, unless the application attached something since."""
        attached, self._attached = self._attached, None
        # Resetting a stale token would roll back whatever was attached after it
        # (OpenTelemetry's tornado instrumentation detaches its own at on_close).
        detach(attached)


def traced(delegate: Any) -> Optional[Traced]:
    """The :class:`Traced` of a handler or client connection, or ``None`` if it is not traced."""
    t = getattr(delegate, ATTR, None)
    return t if isinstance(t, Traced) else None  # a Mock answers every attribute


def new_client_tracer(settings: Settings, request: Any) -> ConnectionTracer:
    """Start the client's handshake span from the ``HTTPRequest`` (its URL is still ``ws://`` or ``wss://``)."""
    return client_tracer(settings, str(request.url))


def add_request_headers(request: Any, ours: dict[str, str]) -> None:
    """Add our headers to the upgrade request; a header the caller set wins."""
    try:
        headers = request.headers
        for name, value in ours.items():
            if name not in headers:
                headers[name] = value
    except Exception:  # headers that cannot take ours: the request goes out as the caller made it
        _log.debug("wstrace: could not add handshake headers", exc_info=True)


def _offered(headers: Any) -> list[str]:
    get_list = getattr(headers, "get_list", None)
    values = get_list(_SUBPROTOCOL) if callable(get_list) else [headers.get(_SUBPROTOCOL) or ""]
    return [p.strip() for v in values for p in v.split(",") if p.strip()]


def new_server_tracer(settings: Settings, handler: Any) -> ConnectionTracer:
    """Start the server's handshake span from the handler's ``HTTPServerRequest``."""
    request = handler.request
    server_host, server_port = hs.host_and_port(getattr(request, "host", None))
    client_address = getattr(request, "remote_ip", None)
    client_port = None
    socket_address = getattr(getattr(request.connection, "context", None), "address", None)
    if isinstance(socket_address, tuple) and len(socket_address) >= 2 and socket_address[0] == client_address:
        client_port = int(socket_address[1])  # unless xheaders replaced the peer address
    return ConnectionTracer.server(
        settings.tracer,
        settings.config,
        path=request.path or "/",
        query=request.query or "",
        headers=request.headers,
        subprotocols=_offered(request.headers),
        method=request.method or "GET",
        scheme="wss" if request.protocol == "https" else "ws",
        server_address=server_host,
        server_port=server_port,
        client_address=client_address,
        client_port=client_port,
        route=route_template(handler),
        instruments=settings.instruments,
    )


def route_template(handler: Any) -> Optional[str]:
    """The matched route's path pattern as a template (``/chat/(\\d+)`` is ``/chat/{1}``), for span names.

    Each group becomes ``{name}`` if named, else ``{n}``, its number. ``None`` when the rule cannot
    be found or its pattern cannot be written back as a path (tornado's own ``reverse_url`` rule).
    """
    try:
        rule = _matched_rule(handler.application.default_router, handler.request, type(handler))
        matcher: Any = getattr(rule, "matcher", None)
        path, count = getattr(matcher, "_path", None), getattr(matcher, "_group_count", None)
        if not isinstance(path, str) or not isinstance(count, int) or not path.startswith("/"):
            return None
        pieces = path.split("%s")
        if len(pieces) != count + 1:
            return None  # a literal "%s" in the pattern
        names = {index: name for name, index in matcher.regex.groupindex.items()}
        template = pieces[0]
        for number, piece in enumerate(pieces[1:], start=1):
            template += "{" + names.get(number, str(number)) + "}" + piece
        return template
    except Exception:  # a router of another kind: the core names the route
        return None


def _matched_rule(router: Any, request: Any, target: type) -> Any:
    """The rule, in ``router`` or a router it holds, that routes ``request`` to the handler class ``target``."""
    for rule in getattr(router, "rules", ()):
        if rule.matcher.match(request) is None:
            continue
        if rule.target is target:
            return rule
        found = _matched_rule(rule.target, request, target)
        if found is not None:
            return found
    return None


def hide_subprotocol_tokens(handler: Any) -> None:
    """Remove our ``wstrace.tp.`` tokens before the application's ``select_subprotocol`` sees the offer.

    A browser that offered only our token gets it echoed back, so that its
    handshake succeeds (``docs/protocol.md``, section 4).
    """
    headers = handler.request.headers
    offered = _offered(headers)
    rest, echo = hide_trace_tokens(offered)
    if len(rest) == len(offered):
        return
    del headers[_SUBPROTOCOL]
    if rest:
        headers[_SUBPROTOCOL] = ", ".join(rest)
    else:
        handler.set_header(_SUBPROTOCOL, echo)
