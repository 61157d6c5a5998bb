"""The server handshake of one ASGI connection: upgrade request, accept, refusal.

The handshake span starts when the application takes the connection (it
receives ``websocket.connect`` or sends its first event), not when the
middleware is called: only then has a router matched, so only then is the
route template known, and span names must use the template, never the path.
"""

from __future__ import annotations

import time
from typing import Any, Optional

from opentelemetry.context import Context
from opentelemetry.trace import SpanContext

from wstrace._context import Attachment, attach, detach
from wstrace.connection import ConnectionTracer
from wstrace.instrumentation._instrumentor import Settings
from wstrace.instrumentation.asgi._common import (
    Message,
    Scope,
    accept_carries_headers,
    address,
    encode_headers,
    route_template,
)


__all__ = ["Handshake", "denial_status"]


class Handshake:
    """What is known of the upgrade request, and the ConnectionTracer once it exists."""

    __slots__ = (
        "_attached",
        "_entered",
        "_entry",
        "_nested_in",
        "_offered",
        "_root_path",
        "_settings",
        "ct",
        "echo",
        "ended",
        "open",
        "scope",
    )

    def __init__(
        self,
        settings: Settings,
        scope: Scope,
        offered: list[str],
        echo: Optional[str],
        entry: Context,
        nested_in: Optional[SpanContext] = None,
    ) -> None:
        self._settings = settings
        self._nested_in = nested_in
        """Another instrumentation's SERVER span for this request, which wstrace's handshake span goes inside."""
        self.scope = scope
        """The scope passed to the application; a router records the matched route in it."""
        self._offered = offered
        self.echo = echo
        self._entry = entry
        # The span is created once routing has named it, but dated from here.
        self._entered = time.time_ns()
        self._root_path = str(scope.get("root_path") or "")
        self._attached: Optional[Attachment] = None
        self.ct: Optional[ConnectionTracer] = None
        self.open = False
        """The application accepted and the 101 went out."""
        self.ended = False
        """The handshake failed, or the connection was recorded as closed."""

    def tracer(self) -> ConnectionTracer:
        """The connection's ConnectionTracer, started on first use."""
        ct = self.ct
        if ct is None:
            ct = self.ct = self._start()
        return ct

    def _start(self) -> ConnectionTracer:
        scope = self.scope
        path = str(scope.get("path") or "/")
        server = address(scope.get("server"))
        client = address(scope.get("client"))
        query = scope.get("query_string") or b""
        # The application's task may have attached context of its own since
        # entry; the handshake belongs to the context the request arrived in.
        attachment = attach(self._entry)
        try:
            return ConnectionTracer.server(
                self._settings.tracer,
                self._settings.config,
                path=path,
                query=query.decode("latin-1") if isinstance(query, bytes) else str(query),
                headers=scope.get("headers") or (),
                subprotocols=self._offered,
                scheme=str(scope.get("scheme") or "ws"),
                server_address=server[0],
                server_port=server[1],
                client_address=client[0],
                client_port=client[1],
                route=route_template(scope, self._root_path),
                instruments=self._settings.instruments,
                start_time=self._entered,
                nested_in=self._nested_in,
            )
        finally:
            attachment.detach()

    def connected(self) -> None:
        """The application took ``websocket.connect``: start, and make the handshake span current until it answers."""
        ct = self.tracer()
        self._attached = attach(ct.handshake_context)

    def release(self) -> None:
        """Detach the handshake context, unless the application attached something since."""
        attached, self._attached = self._attached, None
        detach(attached)

    def accept_message(self, message: Message) -> Message:
        """A copy of the ``websocket.accept`` event with our headers (and the echoed token) added.

        Only for a server that sends the event's headers (:func:`accept_carries_headers`): to any other, none
        are added, so the envelope is not agreed (the client would never see the answer).
        """
        ct = self.tracer()
        accept = dict(message)
        ours = ct.response_headers() if accept_carries_headers(self.scope) else {}
        accept["headers"] = encode_headers(message.get("headers"), ours)
        if self.echo is not None and not message.get("subprotocol"):
            accept["subprotocol"] = self.echo
        return accept

    def accepted(self, accept: Message) -> None:
        self.release()
        self.open = True
        # The 101 as the client got it: with none of the event's headers if the server drops them.
        headers = accept["headers"] if accept_carries_headers(self.scope) else ()
        self.tracer().opened(response_headers=headers, subprotocol=accept.get("subprotocol"))

    def refused(self, status: Optional[int], error: Optional[BaseException] = None) -> None:
        """The application closed before accepting (403), sent a denial response, or failed."""
        self.release()
        if not self.ended:
            self.ended = True
            self.tracer().handshake_failed(status=status, error=error)

    def abandoned(self, error: Optional[BaseException]) -> None:
        """The application returned or raised without answering; ASGI servers then send a 500."""
        # A cancelled task (server shutdown) gets no response at all.
        status = 500 if error is None or isinstance(error, Exception) else None
        self.refused(status, error)


def denial_status(message: Message) -> Optional[int]:
    status: Any = message.get("status")
    return status if isinstance(status, int) else None
