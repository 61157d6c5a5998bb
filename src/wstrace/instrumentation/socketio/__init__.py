"""Instrumentation for `python-socketio <https://python-socketio.readthedocs.io/>`_ (servers, clients, managers).

Usage::

    from wstrace.instrumentation.socketio import SocketioInstrumentor

    SocketioInstrumentor().instrument()

or, with no code change, ``opentelemetry-instrument python app.py`` (entry point ``wstrace-socketio``).
The instrumentor patches the classes, so every ``socketio.Server`` (WSGI, Flask-SocketIO) and
``socketio.AsyncServer`` (ASGI, aiohttp, tornado), every ``socketio.Client`` and ``socketio.AsyncClient``, and every
pub/sub manager (``RedisManager``, ``AsyncRedisManager``, ...) is traced, over WebSocket and long-polling.

Spans are per Socket.IO **event**, not per engine.io frame:

* the engine.io connection request is the connection's handshake span (context from its headers or query, as
  for any WebSocket server); the client's ``connect`` is its handshake span and sends its context;
* ``emit`` is one PRODUCER span ``send {event} {namespace}`` whatever the number of recipients (their count in
  ``wstrace.socketio.recipients``), and a run of emits of one event to one destination (a handler's tokens) is
  one stream span with the stream attributes (an emit with an ack callback always has its own); a handler runs
  in a CONSUMER span ``process {event} {namespace}``, and consecutive events carrying one sender stream's context
  (the receiving end of a stream) run in one such span, a receive stream; an ack callback runs in ``ack {event}
  {namespace}``, a child of the emit it answers;
* between two instrumented ends (negotiated in the handshake), each event carries its sender's context; a peer
  without wstrace sees exactly what it would see from a bare end;
* through a pub/sub manager, the emit's context travels in the published message, and the other processes
  deliver it in spans of the same trace.

Not covered yet: message metrics per event. ``docs/adapters/socketio.md`` is
the guide.

Options (keyword or environment variable) are listed in ``docs/configuration.md``.
"""

from __future__ import annotations

from typing import Any

from wstrace.instrumentation._instrumentor import Settings, WstraceInstrumentor, claim_engineio
from wstrace.instrumentation.socketio import _client, _manager, _server
from wstrace.instrumentation.socketio.package import _instruments


__all__ = ["SocketioInstrumentor"]


class SocketioInstrumentor(WstraceInstrumentor):
    """Instruments every python-socketio server, client and pub/sub manager, threaded and asyncio."""

    _module = "socketio"
    _instruments = _instruments

    def _uninstrument(self, **kwargs: Any) -> None:
        claim_engineio("socketio", False)
        super()._uninstrument(**kwargs)

    def _patch(self, settings: Settings) -> None:
        # Imported here, not at the top: importing the adapter must not import the library.
        import engineio.async_client as eio_async_client  # noqa: PLC0415
        import engineio.client as eio_client  # noqa: PLC0415
        import socketio.async_aiopika_manager as aiopika  # noqa: PLC0415
        import socketio.async_client as async_client  # noqa: PLC0415
        import socketio.async_pubsub_manager as async_pubsub  # noqa: PLC0415
        import socketio.async_redis_manager as async_redis  # noqa: PLC0415
        import socketio.async_server as async_server  # noqa: PLC0415
        import socketio.client as client  # noqa: PLC0415
        import socketio.kafka_manager as kafka  # noqa: PLC0415
        import socketio.kombu_manager as kombu  # noqa: PLC0415
        import socketio.pubsub_manager as pubsub  # noqa: PLC0415
        import socketio.redis_manager as redis_manager  # noqa: PLC0415
        import socketio.server as server  # noqa: PLC0415
        import socketio.zmq_manager as zmq  # noqa: PLC0415

        # Each patch has a threaded and an asyncio wrapper (a Pair) made from one piece of logic; the wrappers that
        # only change arguments serve both as they are (an asyncio method's coroutine is returned, not awaited).
        handshake = _server.handle_eio_connect(settings)
        emit = _server.emit(settings)
        handle_event = _server.handle_event_internal(settings)
        for module, name, which in ((server, "Server", 0), (async_server, "AsyncServer", 1)):
            self._wrap(module, f"{name}._handle_eio_connect", handshake[which])
            self._wrap(module, f"{name}._handle_eio_disconnect", _server.handle_eio_disconnect[which])
            self._wrap(module, f"{name}._send_packet", _server.send_packet)
            self._wrap(module, f"{name}._send_eio_packet", _server.send_eio_packet)
            self._wrap(module, f"{name}.emit", emit[which])
            self._wrap(module, f"{name}._handle_event_internal", handle_event[which])

        connect = _client.connect(settings)
        handle_event = _client.handle_event(settings)
        emit = _client.emit(settings)
        for module, name, which in ((client, "Client", 0), (async_client, "AsyncClient", 1)):
            self._wrap(module, f"{name}.connect", connect[which])
            self._wrap(module, f"{name}._handle_connect", _client.handle_connect)
            self._wrap(module, f"{name}._handle_event", handle_event[which])
            self._wrap(module, f"{name}.emit", emit[which])
            self._wrap(module, f"{name}._handle_eio_disconnect", _client.handle_eio_disconnect[which])
        self._wrap(eio_client, "Client.connect", _client.eio_connect)
        self._wrap(eio_async_client, "AsyncClient.connect", _client.eio_connect)

        emit = _manager.emit(settings)
        handle_emit = _manager.handle_emit(settings)
        for module, name, which in ((pubsub, "PubSubManager", 0), (async_pubsub, "AsyncPubSubManager", 1)):
            self._wrap(module, f"{name}.emit", emit[which])
            self._wrap(module, f"{name}._handle_emit", handle_emit[which])
        for module, cls in (
            (redis_manager, redis_manager.RedisManager),
            (kombu, kombu.KombuManager),
            (kafka, kafka.KafkaManager),
            (zmq, zmq.ZmqManager),
            (async_redis, async_redis.AsyncRedisManager),
            (aiopika, aiopika.AsyncAioPikaManager),
        ):
            if "_publish" in vars(cls):
                self._wrap(module, f"{cls.__name__}._publish", _manager.publish)
        # The WebSocket-level adapters (ASGI, aiohttp, websocket-client) leave engine.io connections to this one.
        claim_engineio("socketio", True)
