"""Instrumentation for `aiohttp <https://docs.aiohttp.org/>`_ WebSockets, client and server.

Usage::

    from wstrace.instrumentation.aiohttp import AiohttpInstrumentor

    AiohttpInstrumentor().instrument(model="message", envelope="negotiate")

or, with no code change, ``opentelemetry-instrument python app.py`` (entry
point ``wstrace-aiohttp``). Nothing else is needed: the instrumentor patches
the classes, so every session and every ``web.WebSocketResponse`` is traced;
there is no per-object switch.

Covered: ``ClientSession.ws_connect`` and ``web.WebSocketResponse.prepare``
(the handshakes); on both WebSocket classes ``send_str``, ``send_bytes``,
``send_json``, ``send_json_bytes``, ``send_frame`` (text and binary frames),
``receive``, ``receive_str``, ``receive_bytes``, ``receive_json``, ``async for``
and ``close``. On the server, the receive span is current in the handler
while it handles the message.
Not covered: frames written below that API (``ws._writer``), and plain HTTP
requests (an HTTP instrumentation traces those). Limits are listed in
``docs/adapters/aiohttp.md``.

Options (keyword or environment variable) are listed in ``docs/configuration.md``.
"""

from __future__ import annotations

from wstrace.instrumentation._instrumentor import Settings, WstraceInstrumentor
from wstrace.instrumentation.aiohttp import _client, _connection, _server


__all__ = ["AiohttpInstrumentor"]


class AiohttpInstrumentor(WstraceInstrumentor):
    """Instruments every aiohttp WebSocket connection, client and server."""

    def _patch(self, settings: Settings) -> None:
        # Imported here, not at the top: importing the adapter must not import
        # the library (opentelemetry-instrument loads every entry point).
        import aiohttp.client as client  # noqa: PLC0415
        import aiohttp.client_ws as client_ws  # noqa: PLC0415
        import aiohttp.web_protocol as web_protocol  # noqa: PLC0415
        import aiohttp.web_ws as web_ws  # noqa: PLC0415

        self._wrap(client, "ClientSession._ws_connect", _client.ws_connect(settings))
        self._wrap(web_ws, "WebSocketResponse.prepare", _server.prepare(settings))
        self._wrap(web_protocol, "RequestHandler.connection_lost", _server.connection_lost)
        for module, cls in ((client_ws, client_ws.ClientWebSocketResponse), (web_ws, web_ws.WebSocketResponse)):
            for name, wrapper in _connection.WRAPPERS.items():
                if name in vars(cls):  # send_frame is missing before aiohttp 3.11
                    self._wrap(module, f"{cls.__name__}.{name}", wrapper, hot=name.startswith("send"))
            for name, make in _connection.METHODS.items():
                self._replace(cls, name, make)
