"""A small Django Channels project for the Channels tests: settings, consumers and the ASGI application.

Nothing here configures Django at import: :func:`configure` does, once per process, when a test (or the peer
process ``tests/peers/channels_server.py``) asks for it, so other tests never see Django settings. Consumers:

* ``ws/chat/<str:room>/`` (``AsyncWebsocketConsumer``): joins the group ``chat_<room>``; echoes ``echo:<text>``;
  ``broadcast:<text>`` sends ``{"type": "chat.message", "text": <text>, "extra": {...}}`` to the group; each
  ``chat.message`` event is recorded (``EVENTS``, and a ``PEER`` line in a peer process) and pushed to the client.
* ``^ws/sync/(?P<name>\\w+)/$`` (``WebsocketConsumer``, a ``re_path``): echoes; ``broadcast:`` as above, to
  ``sync_<name>``, from a thread.
* ``ws/json/`` + ``<int:n>/`` (``JsonWebsocketConsumer`` under a nested ``URLRouter``): echoes the JSON content.

:func:`echo_app` is another application, with one consumer that echoes at a given route (the interop matrix).

The layer: :func:`use_layer` picks the in-memory layer, ``channels_redis``' core layer or its pub/sub layer.
Redis connections get a ``socket_timeout`` above ``channels_redis``' 5 s blocking read: redis-py's default
(5 s) equals it, and an idle consumer's read can then time out and crash it.
"""

from __future__ import annotations

import json
from typing import Any

from asgiref.sync import async_to_sync


REDIS_SOCKET_TIMEOUT = 15.0
"""Above ``RedisChannelLayer.brpop_timeout`` (5 s): redis-py 8's default socket timeout is 5 s too."""

EVENTS: list[dict[str, Any]] = []
"""``chat.message`` events as the handlers received them, in this process."""
PEER = False
"""True in the peer process: events are printed as ``PEER`` lines too."""

EXTRA = {"n": 1, "nested": {"list": [1, "two", None]}, "flag": True}


def layer_config(kind: str, port: int = 0) -> dict[str, Any]:
    """``CHANNEL_LAYERS["default"]`` for ``memory``, ``redis`` (core) or ``pubsub``."""
    host = {"address": f"redis://127.0.0.1:{port}", "socket_timeout": REDIS_SOCKET_TIMEOUT}
    if kind == "memory":
        return {"BACKEND": "channels.layers.InMemoryChannelLayer"}
    if kind == "redis":
        return {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [host]}}
    if kind == "pubsub":
        return {"BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer", "CONFIG": {"hosts": [host]}}
    raise ValueError(kind)


def configure() -> None:
    """Configure Django once for this process (nothing else in the test suite uses Django)."""
    import django  # noqa: PLC0415
    from django.conf import settings  # noqa: PLC0415

    if not settings.configured:
        settings.configure(
            DEBUG=False,
            SECRET_KEY="wstrace-tests",
            ALLOWED_HOSTS=["*"],
            INSTALLED_APPS=["channels"],
            DATABASES={},
            USE_TZ=True,
            CHANNEL_LAYERS={"default": layer_config("memory")},
        )
        django.setup()


def use_layer(kind: str, port: int = 0) -> None:
    """Make the default channel layer ``kind``; layers made before are dropped (new ones are made on use)."""
    from channels.layers import channel_layers  # noqa: PLC0415
    from django.conf import settings  # noqa: PLC0415

    configure()
    settings.CHANNEL_LAYERS = {"default": layer_config(kind, port)}
    channel_layers.backends = {}


def _record(event: dict[str, Any]) -> None:
    EVENTS.append(event)
    if PEER:
        from opentelemetry import trace  # noqa: PLC0415

        span = trace.get_current_span().get_span_context()
        print(
            "PEER " + json.dumps({"event": "layer-event", "body": event, "span_id": f"0x{span.span_id:016x}"}),
            flush=True,
        )


def build() -> Any:
    """The ASGI application (built after ``ChannelsInstrumentor().instrument()`` in zero-code order, or before)."""
    from channels.generic.websocket import (  # noqa: PLC0415
        AsyncWebsocketConsumer,
        JsonWebsocketConsumer,
        WebsocketConsumer,
    )
    from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: PLC0415
    from django.urls import path, re_path  # noqa: PLC0415

    configure()

    class Chat(AsyncWebsocketConsumer):  # type: ignore[misc]
        async def connect(self) -> None:
            self.group = "chat_" + self.scope["url_route"]["kwargs"]["room"]
            await self.channel_layer.group_add(self.group, self.channel_name)
            await self.accept()

        async def disconnect(self, code: int) -> None:
            await self.channel_layer.group_discard(self.group, self.channel_name)

        async def receive(self, text_data: Any = None, bytes_data: Any = None) -> None:
            if text_data and text_data.startswith("broadcast:"):
                event = {"type": "chat.message", "text": text_data[len("broadcast:") :], "extra": EXTRA}
                await self.channel_layer.group_send(self.group, event)
            else:
                await self.send(text_data=f"echo:{text_data}")

        async def chat_message(self, event: dict[str, Any]) -> None:
            _record(event)
            await self.send(text_data=event["text"])

    class Sync(WebsocketConsumer):  # type: ignore[misc]
        def connect(self) -> None:
            self.group = "sync_" + self.scope["url_route"]["kwargs"]["name"]
            async_to_sync(self.channel_layer.group_add)(self.group, self.channel_name)
            self.accept()

        def disconnect(self, code: int) -> None:
            async_to_sync(self.channel_layer.group_discard)(self.group, self.channel_name)

        def receive(self, text_data: Any = None, bytes_data: Any = None) -> None:
            if text_data and text_data.startswith("broadcast:"):
                event = {"type": "chat.message", "text": text_data[len("broadcast:") :], "extra": EXTRA}
                async_to_sync(self.channel_layer.group_send)(self.group, event)
            else:
                self.send(text_data=f"echo:{text_data}")

        def chat_message(self, event: dict[str, Any]) -> None:
            _record(event)
            self.send(text_data=event["text"])

    class Json(JsonWebsocketConsumer):  # type: ignore[misc]
        def receive_json(self, content: Any, **kwargs: Any) -> None:
            self.send_json({"echo": content})

    return ProtocolTypeRouter(
        {
            "websocket": URLRouter(
                [
                    path("ws/chat/<str:room>/", Chat.as_asgi()),
                    re_path(r"^ws/sync/(?P<name>\w+)/$", Sync.as_asgi()),
                    path("ws/json/", URLRouter([path("<int:n>/", Json.as_asgi())])),
                ]
            )
        }
    )


def echo_app(route: str, sync: bool = False) -> Any:
    """An ASGI application whose one consumer (``AsyncWebsocketConsumer``, or ``WebsocketConsumer`` when ``sync``:
    its handlers run in a thread, under a ``URLRouter``) echoes every message back in its frame type at ``route``
    (a Django pattern: no leading ``/``), for the interop matrix."""
    from channels.generic.websocket import AsyncWebsocketConsumer, WebsocketConsumer  # noqa: PLC0415
    from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: PLC0415
    from django.urls import path  # noqa: PLC0415

    configure()

    class Echo(AsyncWebsocketConsumer):  # type: ignore[misc]
        async def receive(self, text_data: Any = None, bytes_data: Any = None) -> None:
            if text_data is not None:
                await self.send(text_data=text_data)
            else:
                await self.send(bytes_data=bytes_data)

    class SyncEcho(WebsocketConsumer):  # type: ignore[misc]
        def receive(self, text_data: Any = None, bytes_data: Any = None) -> None:
            if text_data is not None:
                self.send(text_data=text_data)
            else:
                self.send(bytes_data=bytes_data)

    consumer = SyncEcho if sync else Echo
    return ProtocolTypeRouter({"websocket": URLRouter([path(route, consumer.as_asgi())])})
