"""Instrumentation for `tornado <https://www.tornadoweb.org/>`_ WebSockets (server and client).

Usage::

    from wstrace.instrumentation.tornado import TornadoInstrumentor

    TornadoInstrumentor().instrument(model="message", envelope="negotiate")

or, with no code change, ``opentelemetry-instrument python app.py`` (entry
point ``wstrace-tornado``).

Covered: every ``tornado.websocket.WebSocketHandler`` (the handshake in
``get``, ``open``, ``on_message`` sync or coroutine, ``write_message``,
``close``, ``on_close``) and every ``WebSocketClientConnection`` made by
``websocket_connect`` (``write_message``, ``read_message``,
``on_message_callback``, ``close``). Handler subclasses need no change:
``on_message`` is traced where tornado calls it, not on the class.

The handshake span starts when ``get`` runs, after ``prepare()``: a request
that ``prepare`` rejects gets no wstrace span. OpenTelemetry's own tornado
instrumentation, if enabled too, adds its HTTP ``SERVER`` span, which lasts
until ``on_close``; see ``docs/adapters/tornado.md``.

Options (keyword or environment variable) are listed in ``docs/configuration.md``.
"""

from __future__ import annotations

from wstrace.instrumentation._instrumentor import Settings, WstraceInstrumentor
from wstrace.instrumentation.tornado import _client, _connection, _server


__all__ = ["TornadoInstrumentor"]


class TornadoInstrumentor(WstraceInstrumentor):
    """Instruments every tornado WebSocket handler and client connection."""

    def _patch(self, settings: Settings) -> None:
        # Imported here, not at the top: importing the adapter must not import
        # the library (opentelemetry-instrument loads every entry point).
        import tornado.websocket as ws  # noqa: PLC0415

        # Server handshake: the request (get), the 101's headers
        # (_accept_connection), the 101 sent and open() not yet called (_detach_stream).
        self._wrap(ws, "WebSocketHandler.get", _server.get(settings))
        self._wrap(ws, "WebSocketProtocol13._accept_connection", _server.accept_connection)
        self._wrap(ws, "WebSocketHandler._detach_stream", _server.detach_stream)
        # Client handshake: the request, the 101, and every way it can fail.
        client = ws.WebSocketClientConnection
        self._wrap(ws, "WebSocketClientConnection.__init__", _client.connection_init(settings, client.on_message))
        self._wrap(ws, "WebSocketClientConnection.headers_received", _client.headers_received)
        self._wrap(ws, "WebSocketClientConnection._on_http_response", _client.on_http_response)
        # Messages and close, on the protocol that both sides share.
        self._wrap(ws, "WebSocketProtocol13.write_message", _connection.write_message, hot=True)
        self._wrap(ws, "WebSocketProtocol._run_callback", _connection.run_callback, hot=True)
        self._wrap(ws, "WebSocketProtocol13._receive_frame_loop", _connection.receive_frame_loop)
        self._wrap(ws, "WebSocketProtocol13.close", _connection.protocol_close)
        # The client's queue of messages, read in the application's task.
        self._wrap(ws, "WebSocketClientConnection.read_message", _connection.read_message, hot=True)
        self._wrap(ws, "WebSocketClientConnection.close", _connection.client_close)
