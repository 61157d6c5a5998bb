"""Instrumentation for `websockets <https://websockets.readthedocs.io/>`_ (asyncio and sync).

Usage::

    from wstrace.instrumentation.websockets import WebsocketsInstrumentor

    WebsocketsInstrumentor().instrument(model="message", envelope="negotiate")

or, with no code change, ``opentelemetry-instrument python app.py`` (entry
point ``wstrace-websockets``).

Covered: ``websockets.asyncio.client.connect``, ``websockets.asyncio.server.serve``,
``websockets.sync.client.connect`` and ``websockets.sync.server.serve``; on their
connections ``send``, ``recv``, ``recv_streaming``, iteration and ``close``. A
``send`` of an iterable (or asynchronous iterable) of fragments is one message,
enveloped once at the start of its first fragment; a message of 1 MiB or more
goes as two fragments, its envelope then itself, rather than copied behind it.
Not covered: ``broadcast()``, which writes frames without going through
``send`` (its frames carry no envelope, and receivers deliver them as they
are), and the deprecated ``websockets.legacy`` implementation.

Options (keyword or environment variable) are listed in ``docs/configuration.md``.
One server can have options of its own, given as its ``process_request``::

    serve(handler, host, port, process_request=server_options(envelope="always"))
"""

from __future__ import annotations

from typing import Any

from wstrace.instrumentation._instrumentor import Settings, WstraceInstrumentor
from wstrace.instrumentation.websockets import _client, _connection, _limits, _server
from wstrace.instrumentation.websockets._options import server_options


__all__ = ["WebsocketsInstrumentor", "server_options"]


_HOT = frozenset({"send", "recv"})  # every message takes them: plain functions, not wrapt wrappers


class WebsocketsInstrumentor(WstraceInstrumentor):
    """Instruments every websockets client and server connection (asyncio and sync)."""

    def _patch(self, settings: Settings) -> None:
        # Imported here, not at the top: importing the adapter must not import
        # the library (opentelemetry-instrument loads every entry point).
        import websockets.asyncio.client as aclient  # noqa: PLC0415
        import websockets.asyncio.connection as aconnection  # noqa: PLC0415
        import websockets.asyncio.server as aserver  # noqa: PLC0415
        import websockets.client as client_protocol  # noqa: PLC0415
        import websockets.protocol as protocol  # noqa: PLC0415
        import websockets.server as server_protocol  # noqa: PLC0415
        import websockets.sync.client as sclient  # noqa: PLC0415
        import websockets.sync.connection as sconnection  # noqa: PLC0415
        import websockets.sync.server as sserver  # noqa: PLC0415

        self._wrap(aclient, "ClientConnection.handshake", _client.async_handshake(settings))
        self._wrap(aserver, "ServerConnection.handshake", _server.async_handshake(settings))
        self._wrap(sclient, "ClientConnection.handshake", _client.sync_handshake(settings))
        self._wrap(sserver, "ServerConnection.handshake", _server.sync_handshake(settings))
        wrappers: dict[Any, dict[str, Any]] = {
            aconnection: {
                "recv_streaming": _connection.async_recv_streaming,
                "close": _connection.async_close,
                "connection_lost": _connection.socket_gone,
            },
            sconnection: {
                "send": _connection.sync_send,
                "recv": _connection.sync_recv,
                "recv_streaming": _connection.sync_recv_streaming,
                "close": _connection.sync_close,
                "close_socket": _connection.socket_gone,
            },
        }
        for module, methods in wrappers.items():
            for name, wrapper in methods.items():
                self._wrap(module, f"Connection.{name}", wrapper, hot=name in _HOT)
        self._replace(aconnection, "Connection.recv", _connection.async_recv_method)
        self._replace(aconnection, "Connection.send", _connection.async_send_method)
        # The handshake's response settles a connection's max_size once the envelope is in force.
        self._replace(server_protocol, "ServerProtocol.send_response", _limits.send_response_method)
        self._replace(client_protocol, "ClientProtocol.process_response", _limits.process_response_method)
        _limits.FRAMES.arm(lambda: self._replace(protocol, "Protocol.recv_frame", _limits.recv_frame_method))

    def _uninstrument(self, **kwargs: Any) -> None:
        _limits.FRAMES.arm(None)
        super()._uninstrument(**kwargs)
