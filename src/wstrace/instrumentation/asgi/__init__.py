"""Tracing for the WebSocket connections of any ASGI application (Starlette, FastAPI, Django Channels, Quart).

Usage::

    from wstrace.instrumentation.asgi import WstraceASGIMiddleware

    app = WstraceASGIMiddleware(app, model="message", envelope="negotiate")

or, in Starlette and FastAPI, ``app.add_middleware(WstraceASGIMiddleware, model="message")``;
``StarletteInstrumentor`` (``wstrace.instrumentation.starlette``) adds it to every
Starlette and FastAPI application with no code change.

Only ``scope["type"] == "websocket"`` is traced; ``http`` and ``lifespan`` pass
straight through. Traced: the handshake (``websocket.connect`` and the
application's ``websocket.accept``, ``websocket.close`` before accept = 403, or a
denial response), each ``websocket.send`` and ``websocket.receive`` with ``text``
or ``bytes`` (the receive span is current while the application handles the
message), the close from either side, a dropped connection, and an application
that returns or raises without closing.

The handshake span starts when the application takes the connection (receives
``websocket.connect`` or sends its first event), that is after routing, so that
span names use the route template (``scope["route"]``, set by Starlette's and
FastAPI's routers) instead of the path.

The envelope is negotiated only under a server that puts ``websocket.accept``'s
headers on the 101, which ASGI spec version 2.1 added (``scope["asgi"]["spec_version"]``):
uvicorn and hypercorn do; daphne declares no version and drops them, so its
connections stay plain. The server's own message-size limit counts the envelope.

When the span current at entry is a recording SERVER span (OpenTelemetry's
``OpenTelemetryMiddleware`` or FastAPI's native telemetry outside this middleware),
wstrace's handshake span is an INTERNAL child of it; wstrace never writes on a
span it did not start.

Options (keyword or environment variable) are listed in ``docs/configuration.md``;
``docs/adapters/asgi.md`` is the full guide.
"""

from __future__ import annotations

from wstrace.instrumentation.asgi.middleware import WstraceASGIMiddleware


__all__ = ["WstraceASGIMiddleware"]
