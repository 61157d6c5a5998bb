"""Instrumentation for Django Channels 4 (https://channels.readthedocs.io/): consumers and channel layers.

Usage, before the ASGI application is built (in ``asgi.py``, before ``ProtocolTypeRouter(...)``)::

    from wstrace.instrumentation.channels import ChannelsInstrumentor

    ChannelsInstrumentor().instrument(model="message", envelope="negotiate")

or, with no code change, ``opentelemetry-instrument daphne myproject.asgi:application`` (entry point
``wstrace-channels``; uvicorn and hypercorn too).

What it does:

* Every WebSocket connection that reaches a ``ProtocolTypeRouter`` (or an outermost ``URLRouter``) goes
  through :class:`~wstrace.instrumentation.asgi.WstraceASGIMiddleware`: handshake, message, reply-stream
  and close spans, as for any ASGI application, for ``WebsocketConsumer``, ``AsyncWebsocketConsumer``,
  ``JsonWebsocketConsumer`` and their JSON and generic siblings. Span names and ``http.route`` use the
  route the ``URLRouter`` matched, as Django writes it (``ws/chat/<str:room>/``, or a ``re_path``'s regular
  expression), never the path. The routers are patched when called, so an application built before
  ``instrument()`` is traced too.
* A message's receive span is current in its handler (``receive``, ``websocket_receive``), though the
  consumer received it in another task, so what the handler sends is its reply stream.
* **Channel layers**: ``send`` and ``group_send`` of the in-memory layer and of ``channels_redis``' core and
  pub/sub layers make a ``send {group or channel}`` PRODUCER span and carry its context in the event, under
  the key ``"wstrace.context"``; the consumer that handles the event (in this or another process) runs its
  handler in a ``process {group or channel}`` CONSUMER span, the sender's child (``trust="parent"``), a
  new trace linked to it (``"link"``) or a new trace (``"ignore"``). The handler receives the event exactly
  as it was sent, without the key; a process without wstrace would see the key: turn the carrier off with
  ``layer_carrier=False`` (``WSTRACE_CHANNELS_LAYER_CARRIER=false``) while such consumers remain.
* **Broadcasts**: a ``group_send`` to N consumers makes N ``process`` spans (``group_spans="each"``, the
  default); ``group_spans="first"`` (``WSTRACE_CHANNELS_GROUP_SPANS=first``) makes one per group message and
  consumer process, the first handler call's, and runs the other handler calls in its context.

Options (keyword or environment variable) are listed in ``docs/configuration.md``; ``docs/adapters/channels.md``
is the guide.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional

from wstrace._log import warn_once
from wstrace.exceptions import ConfigError
from wstrace.instrumentation._instrumentor import Settings, WstraceInstrumentor
from wstrace.instrumentation.channels import _layers, _server


__all__ = ["GROUP_SPANS_ENV", "LAYER_CARRIER_ENV", "ChannelsInstrumentor"]

LAYER_CARRIER_ENV = "WSTRACE_CHANNELS_LAYER_CARRIER"
"""Environment variable for ``layer_carrier`` (default on)."""
GROUP_SPANS_ENV = "WSTRACE_CHANNELS_GROUP_SPANS"
"""Environment variable for ``group_spans`` (default ``each``)."""
GROUP_SPANS = ("each", "first")
"""``group_spans`` values: a ``process`` span per handler call, or per group message and consumer process."""

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise ConfigError(f"expected a boolean, got {value!r}")


def layer_carrier(value: Any = None, environ: Optional[Mapping[str, str]] = None) -> bool:
    """The ``layer_carrier`` option: the keyword if given (a bad one raises
    :class:`~wstrace.exceptions.ConfigError`), else ``WSTRACE_CHANNELS_LAYER_CARRIER`` (a bad one is logged
    once and ignored), else on."""
    if value is not None:
        try:
            return _flag(value)
        except ConfigError as exc:
            raise ConfigError(f"layer_carrier: {exc}") from None
    raw = (os.environ if environ is None else environ).get(LAYER_CARRIER_ENV)
    if raw is None or not raw.strip():
        return True
    try:
        return _flag(raw)
    except ConfigError as exc:
        warn_once(f"ignoring {LAYER_CARRIER_ENV}={raw!r} (layer_carrier: {exc}); using the default, True")
        return True


def group_spans(value: Any = None, environ: Optional[Mapping[str, str]] = None) -> str:
    """The ``group_spans`` option: the keyword if given (a bad one raises
    :class:`~wstrace.exceptions.ConfigError`), else ``WSTRACE_CHANNELS_GROUP_SPANS`` (a bad one is logged once
    and ignored), else ``each``."""
    if value is not None:
        text = value.strip().lower() if isinstance(value, str) else value
        if text not in GROUP_SPANS:
            raise ConfigError(f"group_spans: expected one of {', '.join(GROUP_SPANS)}, got {value!r}")
        return str(text)
    raw = (os.environ if environ is None else environ).get(GROUP_SPANS_ENV)
    if raw is None or not raw.strip():
        return "each"
    text = raw.strip().lower()
    if text not in GROUP_SPANS:
        choices = ", ".join(GROUP_SPANS)
        warn_once(f"ignoring {GROUP_SPANS_ENV}={raw!r} (expected one of {choices}); using the default, each")
        return "each"
    return text


class ChannelsInstrumentor(WstraceInstrumentor):
    """Traces Django Channels consumers (through the ASGI middleware) and carries context through channel layers."""

    def _instrument(self, **kwargs: Any) -> None:
        self.__dict__["_wstrace_layer_carrier"] = layer_carrier(kwargs.pop("layer_carrier", None))
        self.__dict__["_wstrace_group_spans"] = group_spans(kwargs.pop("group_spans", None))
        super()._instrument(**kwargs)

    def _patch(self, settings: Settings) -> None:
        # Imported here, not at the top: importing the adapter must not import the library
        # (opentelemetry-instrument loads every entry point).
        import channels.consumer as consumer  # noqa: PLC0415
        import channels.layers as layers  # noqa: PLC0415
        import channels.routing as routing  # noqa: PLC0415
        import wrapt  # noqa: PLC0415 - only its import hooks are needed, and only here
        from channels.exceptions import StopConsumer  # noqa: PLC0415

        switch = _server.Switch()
        self.__dict__["_wstrace_switch"] = switch
        carrier = bool(self.__dict__.get("_wstrace_layer_carrier", True))
        first = self.__dict__.get("_wstrace_group_spans", "each") == "first"
        carry = _layers.Layers(settings, carrier, switch, first)
        self._wrap(routing, "ProtocolTypeRouter.__call__", _server.protocol_router_wrapper(settings, switch))
        self._wrap(routing, "URLRouter.__call__", _server.url_router_wrapper(settings, switch))
        # consumer.py looks the function up in its own module when a consumer starts.
        self._replace(consumer, "await_many_dispatch", _server.dispatch_patch(carry, switch, (StopConsumer,)))
        for name in ("send", "group_send"):
            self._wrap(layers, f"InMemoryChannelLayer.{name}", carry.sender(name))

        def patch_layer(owner: str) -> Any:
            def patch(module: Any) -> None:
                # The hook cannot be removed, so a stale one (from before an uninstrument) does nothing.
                if switch.on and self.__dict__.get("_wstrace_switch") is switch:
                    for name in ("send", "group_send"):
                        self._wrap(module, f"{owner}.{name}", carry.sender(name))

            return patch

        # Each runs now if channels_redis is imported already, else when it is; never imports it.
        wrapt.register_post_import_hook(patch_layer("RedisChannelLayer"), "channels_redis.core")
        # RedisPubSubChannelLayer hands every call to a layer of the running event loop.
        wrapt.register_post_import_hook(patch_layer("RedisPubSubLoopLayer"), "channels_redis.pubsub")

    def _uninstrument(self, **kwargs: Any) -> None:
        switch = self.__dict__.pop("_wstrace_switch", None)
        if switch is not None:
            switch.on = False
        super()._uninstrument(**kwargs)
