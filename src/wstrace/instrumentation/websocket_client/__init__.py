"""Instrumentation for `websocket-client <https://websocket-client.readthedocs.io/>`_ (import name ``websocket``).

Usage::

    from wstrace.instrumentation.websocket_client import WebsocketClientInstrumentor

    WebsocketClientInstrumentor().instrument(model="message", envelope="negotiate")

or, with no code change, ``opentelemetry-instrument python app.py`` (entry
point ``wstrace-websocket-client``).

Covered (client side; the library has no server): ``websocket.create_connection``,
``websocket.WebSocket().connect`` and ``websocket.WebSocketApp(...).run_forever()``.
The handshake carries the context and the envelope offer in the ``header``
option, merged into the caller's list, dict or callable result (a header the
caller set wins). Every message sent (``send``, ``send_text``, ``send_bytes``,
``send_binary``, ``send_frame``, ``WebSocketApp.send*``) gets a send span and,
when negotiated, the envelope; every message received (``recv``, ``recv_data``,
``recv_data_frame``, iteration, ``on_message`` / ``on_data``) is stripped and gets a
receive span. In ``WebSocketApp`` the receive span is current while
``on_data`` and ``on_message`` run and ends when they return. Close frames
from either side, ``shutdown()`` and a dropped connection end the connection.

A message sent frame by frame (``send_frame`` with ``fin=0``, then
continuation frames) is one message: its envelope goes in its first frame,
its send span ends with its last frame and has the whole message's size.

Not covered: ``ping``/``pong`` and close frames (control frames, never
enveloped).

Options (keyword or environment variable) are listed in ``docs/configuration.md``.
"""

from __future__ import annotations

from wstrace.instrumentation._instrumentor import Settings, WstraceInstrumentor
from wstrace.instrumentation.websocket_client import _client, _connection


__all__ = ["WebsocketClientInstrumentor"]


class WebsocketClientInstrumentor(WstraceInstrumentor):
    """Instruments every websocket-client connection: ``create_connection``, ``WebSocket`` and ``WebSocketApp``."""

    def _patch(self, settings: Settings) -> None:
        # Imported here, not at the top: importing the adapter must not import
        # the library (opentelemetry-instrument loads every entry point).
        import websocket._app as app  # noqa: PLC0415
        import websocket._core as core  # noqa: PLC0415

        self._wrap(core, "WebSocket.connect", _client.connect(settings))
        self._wrap(core, "WebSocket.send_frame", _connection.send_frame, hot=True)
        self._wrap(core, "WebSocket.recv_data_frame", _connection.recv_data_frame, hot=True)
        self._wrap(core, "WebSocket.close", _connection.close)
        self._wrap(core, "WebSocket.shutdown", _connection.shutdown)
        # WebSocketApp's read loop is driven by a dispatcher; where the classes
        # live moved between releases, so take them from the module that uses them.
        # Not WrappedDispatcher: it hands the read step to the application's own
        # dispatcher, which must get the library's callback, not ours.
        for name in ("Dispatcher", "SSLDispatcher"):
            if hasattr(getattr(app, name, None), "read"):
                self._wrap(app, f"{name}.read", _connection.dispatcher_read)
