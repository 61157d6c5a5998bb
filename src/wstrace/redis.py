"""Trace context through Redis Streams, lists and pub/sub, with redis-py (sync and asyncio).

The hop by which a WebSocket gateway hands work to workers on other machines,
and by which they hand results back. This module never imports redis: the
helpers take the client (or pub/sub object) you already have.

Wire format, with the WebSocket envelope codec (``docs/protocol.md``):

* a **list item** or **pub/sub message** is the value with a text-layout
  envelope in front (section 5.1: ``1E "wt1" <header> 1E <value>``), for
  ``str`` and ``bytes`` values alike. Redis values have no frame type, and the
  text layout keeps a UTF-8 value valid UTF-8, so clients with
  ``decode_responses=True`` read it too;
* a **stream entry** gets one more field, ``wstrace`` by default, holding an
  envelope with an empty payload. The application's fields are not touched.

Readers strip what writers add and return :class:`~wstrace.queues.Carried`
items; handle each in ``with restore(carried) as item:``. An entry that holds
no valid envelope (written by someone else, truncated, garbage) comes back
exactly as Redis returned it, with an empty context: never an error, never
dropped.

Writes are ``{command} {destination}`` spans (``lpush jobs``; kind ``PRODUCER``,
``messaging.operation.type`` ``send``); their context is the one the message
carries, so a worker's ``process`` span is their child (or linked to them, with
``carry_link="link"``).
"""

from __future__ import annotations

import logging
from types import TracebackType
from typing import Any, AsyncIterator, Iterable, Iterator, Mapping, NamedTuple, Optional, Sequence

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind
from opentelemetry.util.types import AttributeValue

from wstrace import _context, envelope as codec, propagation, semconv as sc
from wstrace._log import warn_once
from wstrace._spans import record_error
from wstrace.envelope import DEFAULT_MAX_HEADER_BYTES
from wstrace.exceptions import EnvelopeEncodeError
from wstrace.queues import Carried, _messaging, _tracer


__all__ = [
    "DEFAULT_FIELD",
    "AsyncRedisHop",
    "RedisHop",
    "StreamEntry",
    "decode_entry",
    "decode_value",
    "encode_fields",
    "encode_value",
]

DEFAULT_FIELD = "wstrace"
"""Name of the stream-entry field that carries the context."""

_SYSTEM = "redis"

_log = logging.getLogger(__name__)


class StreamEntry(NamedTuple):
    """One entry read from a stream."""

    stream: Any
    """Stream name as the client returned it (``bytes`` unless ``decode_responses``)."""
    id: Any
    """Entry id, as returned."""
    fields: Any
    """The entry's fields without the context field (``None`` for a deleted entry)."""
    extra: tuple[Any, ...] = ()
    """Anything else the client returned for the entry (``XREADGROUP ... CLAIM``)."""


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _size(value: Any) -> Optional[int]:
    if isinstance(value, str):
        return len(value.encode("utf-8", "surrogatepass"))
    if isinstance(value, bytes):
        return len(value)
    return None


def _fields_size(fields: Any, skip: Any = None) -> Optional[int]:
    """A stream entry's body size: the bytes of its field names and values (numbers as the text
    redis-py sends), without the context field ``skip``; ``None`` if a part has no known size."""
    if not isinstance(fields, Mapping):
        return None
    total = 0
    for key, value in fields.items():
        if key is skip:
            continue
        for part in (key, value):
            if isinstance(part, (int, float)) and not isinstance(part, bool):
                part = repr(part)
            size = _size(part)
            if size is None:
                return None
            total += size
    return total


def _carrier(context: Optional[Context]) -> dict[str, str]:
    try:
        return propagation.inject(context)
    except Exception as exc:  # a broken propagator must not stop the write
        warn_once("injecting context into a Redis value", exc, logger=_log)
        return {}


def _envelope(payload: str | bytes, carrier: Mapping[str, str], max_header: int) -> str | bytes:
    try:
        return codec.encode_text(payload, carrier, max_header=max_header)
    except EnvelopeEncodeError as exc:
        # Too much baggage: an empty envelope, never a bare or dropped value.
        warn_once(f"a carrier over the envelope cap was dropped ({exc}); the value carries no context", logger=_log)
        return codec.encode_text(payload, None, max_header=max_header)


def encode_value(value: Any, context: Optional[Context] = None, *, max_header: int = DEFAULT_MAX_HEADER_BYTES) -> Any:
    """A list item or pub/sub message carrying ``context`` (the current one by default).

    ``str`` stays ``str``, ``bytes``-like becomes ``bytes``; numbers are turned
    into text as redis-py would. Anything else is returned unchanged, for the
    client to encode or reject as usual.
    """
    if isinstance(value, bool):
        return value  # redis-py refuses booleans; let it say so
    if isinstance(value, (int, float)):
        value = repr(value)  # redis-py's own encoding of numbers
    elif isinstance(value, (bytearray, memoryview)):
        value = bytes(value)
    if not isinstance(value, (str, bytes)):
        return value
    return _envelope(value, _carrier(context), max_header)


def _decode(value: Any, max_header: int) -> tuple[Any, Optional[Context]]:
    """``(payload, context)``, or ``(value, None)`` when ``value`` holds no valid envelope."""
    if not isinstance(value, (str, bytes)):
        return value, None
    decoded = codec.decode(value, max_header=max_header)
    if decoded.carrier is None:
        return value, None
    try:
        return decoded.payload, propagation.extract(decoded.carrier)
    except Exception as exc:  # a propagator that chokes on the carrier
        warn_once("extracting context from a Redis value", exc, logger=_log)
        return decoded.payload, Context()


def _value_attributes(payload: Any) -> dict[str, AttributeValue]:
    attributes: dict[str, AttributeValue] = {sc.MESSAGING_SYSTEM: _SYSTEM}
    size = _size(payload)
    if size is not None:
        attributes[sc.MESSAGING_MESSAGE_BODY_SIZE] = size
    return attributes


def decode_value(
    value: Any, destination: Optional[str] = None, *, max_header: int = DEFAULT_MAX_HEADER_BYTES
) -> Carried[Any]:
    """The value :func:`encode_value` wrote, with its context; any other value unchanged."""
    payload, context = _decode(value, max_header)
    return Carried(payload, context or Context(), destination, _value_attributes(payload))


def _field_key(fields: Mapping[Any, Any], field: str) -> Any:
    """The key under which ``fields`` holds ``field`` (as ``str`` or ``bytes``), or ``None``."""
    raw = field.encode("utf-8")
    for key in fields:
        if (isinstance(key, str) and key == field) or (isinstance(key, bytes) and key == raw):
            return key
    return None


def encode_fields(
    fields: Mapping[Any, Any],
    context: Optional[Context] = None,
    *,
    field: str = DEFAULT_FIELD,
    max_header: int = DEFAULT_MAX_HEADER_BYTES,
) -> dict[Any, Any]:
    """A copy of a stream entry's fields plus the context field.

    If the entry already has a field of that name it is the application's, and
    it is kept: the copy then carries no context.
    """
    out = dict(fields)
    if _field_key(out, field) is not None:
        warn_once(f"a stream entry already has a {field!r} field, so it carries no context", logger=_log)
        return out
    out[field] = _envelope("", _carrier(context), max_header)
    return out


def decode_entry(
    stream: Any,
    entry_id: Any,
    fields: Any,
    *,
    extra: Sequence[Any] = (),
    group: Optional[str] = None,
    field: str = DEFAULT_FIELD,
    max_header: int = DEFAULT_MAX_HEADER_BYTES,
) -> Carried[StreamEntry]:
    """One stream entry, with the context field removed and decoded.

    An entry whose context field is missing or is not exactly an empty-payload
    envelope keeps all its fields, that one included.
    """
    attributes: dict[str, AttributeValue] = {sc.MESSAGING_SYSTEM: _SYSTEM}
    if entry_id is not None:
        attributes[sc.MESSAGING_MESSAGE_ID] = _text(entry_id)
    if group:
        attributes[sc.MESSAGING_CONSUMER_GROUP_NAME] = group
    destination = _text(stream)
    if isinstance(fields, Mapping):
        key = _field_key(fields, field)
        if key is not None:
            payload, context = _decode(fields[key], max_header)
            if context is not None and payload in ("", b""):
                rest = {k: v for k, v in fields.items() if k is not key}
                _set_size(attributes, _fields_size(rest))
                return Carried(StreamEntry(stream, entry_id, rest, tuple(extra)), context, destination, attributes)
    _set_size(attributes, _fields_size(fields))
    return Carried(StreamEntry(stream, entry_id, fields, tuple(extra)), Context(), destination, attributes)


def _set_size(attributes: dict[str, AttributeValue], size: Optional[int]) -> None:
    if size is not None:
        attributes[sc.MESSAGING_MESSAGE_BODY_SIZE] = size


def _is_entry(item: Any) -> bool:
    # parse_stream_list gives (id, fields[, ...]) tuples and RESP3 may wrap a
    # stream's entries in one more list: an entry starts with its id, a wrapper
    # with an entry.
    return isinstance(item, (tuple, list)) and len(item) >= 2 and not isinstance(item[0], (tuple, list))


def _flatten(entries: Any) -> Iterator[Any]:
    for item in entries or ():
        if _is_entry(item):
            yield item
        elif isinstance(item, list):
            yield from _flatten(item)


def _stream_pairs(response: Any) -> Iterable[tuple[Any, Any]]:
    if not response:
        return ()
    if isinstance(response, Mapping):
        return response.items()
    return ((pair[0], pair[1]) for pair in response)


class _Write:
    """A ``{command} {destination}`` span (operation type ``send``) around one write; its
    context is what the message carries."""

    def __init__(
        self, tracer: trace.Tracer, op: str, destination: Any, values: Sequence[Any], size: Optional[int] = None
    ) -> None:
        self.span: Optional[Span] = None
        self.context: Optional[Context] = None  # None: inject the current context
        self._attachment: Optional[_context.Attachment] = None
        try:
            name = _text(destination)
            # "send": the messaging conventions' current name for what "publish" was (deprecated).
            attributes = _messaging(_SYSTEM, "send", op, name)
            if len(values) == 1:
                _set_size(attributes, _size(values[0]) if size is None else size)
            elif len(values) > 1:
                attributes[sc.MESSAGING_BATCH_MESSAGE_COUNT] = len(values)
            # The conventions' span name: "{messaging.operation.name} {destination}".
            self.span = tracer.start_span(f"{op} {name}", kind=SpanKind.PRODUCER, attributes=attributes)
            self.context = trace.set_span_in_context(self.span)
        except Exception as exc:  # pragma: no cover - defensive
            warn_once("starting a send span", exc, logger=_log)

    def __enter__(self) -> _Write:
        if self.context is not None:
            # Current during the call, so a redis-py instrumentation's span nests under it.
            self._attachment = _context.attach(self.context)
        return self

    def message_id(self, value: Any) -> None:
        if self.span is not None and value is not None and self.span.is_recording():
            self.span.set_attribute(sc.MESSAGING_MESSAGE_ID, _text(value))

    def __exit__(
        self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        _context.detach(self._attachment)
        span = self.span
        if span is None:
            return
        if exc is not None and span.is_recording():
            record_error(span, exc)
        span.end()


class _Hop:
    """What the sync and asyncio helpers share: the codec, with their options."""

    def __init__(
        self,
        client: Any,
        *,
        tracer_provider: Optional[trace.TracerProvider] = None,
        field: str = DEFAULT_FIELD,
        max_header: int = DEFAULT_MAX_HEADER_BYTES,
    ) -> None:
        self.client = client
        """The wrapped client, for every other command."""
        self.field = field
        self.max_header = max_header
        self._tracer = _tracer(tracer_provider)

    def _write(self, op: str, destination: Any, values: Sequence[Any], size: Optional[int] = None) -> _Write:
        return _Write(self._tracer, op, destination, values, size)

    def _encode(self, values: Sequence[Any], write: _Write) -> list[Any]:
        return [encode_value(v, write.context, max_header=self.max_header) for v in values]

    def _fields(self, fields: Mapping[Any, Any], write: _Write) -> dict[Any, Any]:
        return encode_fields(fields, write.context, field=self.field, max_header=self.max_header)

    def _popped(self, result: Any) -> Optional[Carried[Any]]:
        """A ``BRPOP``/``BLPOP`` reply: ``(key, value)`` carried, or ``None`` on timeout."""
        if result is None:
            return None
        if not (isinstance(result, (tuple, list)) and len(result) == 2):
            return Carried(result)  # not a shape we know: hand it over untouched
        key, value = result
        carried = decode_value(value, _text(key), max_header=self.max_header)
        return Carried((key, carried.item), carried.context, carried.destination, carried.attributes)

    def _values(self, name: Any, result: Any, count: Optional[int]) -> Any:
        """An ``RPOP``/``LPOP`` reply: one carried value, a list of them, or ``None``."""
        if result is None:
            return None
        if count is None:
            return decode_value(result, _text(name), max_header=self.max_header)
        return [decode_value(v, _text(name), max_header=self.max_header) for v in result]

    def _entries(self, response: Any, group: Optional[str]) -> list[Carried[StreamEntry]]:
        """An ``XREAD``/``XREADGROUP`` reply (any shape redis-py gives), flattened in order."""
        out = []
        try:
            for stream, entries in _stream_pairs(response):
                for entry in _flatten(entries):
                    entry_id, fields, *extra = entry
                    out.append(
                        decode_entry(
                            stream,
                            entry_id,
                            fields,
                            extra=extra,
                            group=group,
                            field=self.field,
                            max_header=self.max_header,
                        )
                    )
        except Exception as exc:
            # A reply shape this code does not know: lose nothing, carry no context.
            warn_once("reading an unknown XREAD reply shape", exc, logger=_log)
            return [Carried(StreamEntry(None, None, response))]
        return out

    def _message(self, message: Any) -> Carried[Any]:
        """A pub/sub message dict, with ``data`` stripped of its envelope."""
        if not isinstance(message, dict):
            return Carried(message)
        destination = _text(message["channel"]) if message.get("channel") is not None else None
        attributes: dict[str, AttributeValue] = {sc.MESSAGING_SYSTEM: _SYSTEM}
        if message.get("type") not in ("message", "pmessage"):
            return Carried(message, Context(), destination, attributes)  # (un)subscribe confirmations, pong
        payload, context = _decode(message.get("data"), self.max_header)
        attributes.update(_value_attributes(payload))
        if context is None:
            return Carried(message, Context(), destination, attributes)
        return Carried({**message, "data": payload}, context, destination, attributes)


class RedisHop(_Hop):
    """redis-py commands that carry trace context, for a sync client (``redis.Redis``).

    Writes (``xadd``, ``lpush``, ``rpush``, ``publish``) take the same
    arguments as the client's and return what it returns. Reads return
    :class:`~wstrace.queues.Carried` items in place of values: ``brpop`` and
    ``blpop`` a carried ``(key, value)``, ``rpop`` and ``lpop`` a carried value
    (a list with ``count``), ``xread`` and ``xreadgroup`` a flat list of carried
    :class:`StreamEntry`, ``get_message`` and ``listen`` carried message dicts.
    """

    def xadd(self, name: Any, fields: Mapping[Any, Any], **kwargs: Any) -> Any:
        """``XADD`` with the context in an extra field."""
        with self._write("xadd", name, [None], _fields_size(fields)) as write:
            entry_id = self.client.xadd(name, self._fields(fields, write), **kwargs)
            write.message_id(entry_id)
        return entry_id

    def lpush(self, name: Any, *values: Any) -> Any:
        """``LPUSH``, each value enveloped."""
        with self._write("lpush", name, values) as write:
            return self.client.lpush(name, *self._encode(values, write))

    def rpush(self, name: Any, *values: Any) -> Any:
        """``RPUSH``, each value enveloped."""
        with self._write("rpush", name, values) as write:
            return self.client.rpush(name, *self._encode(values, write))

    def publish(self, channel: Any, message: Any, **kwargs: Any) -> Any:
        """``PUBLISH`` an enveloped message."""
        with self._write("publish", channel, [message]) as write:
            return self.client.publish(channel, *self._encode([message], write), **kwargs)

    def brpop(self, keys: Any, timeout: float = 0) -> Optional[Carried[Any]]:
        """``BRPOP``: a carried ``(key, value)``, or ``None`` on timeout."""
        return self._popped(self.client.brpop(keys, timeout))

    def blpop(self, keys: Any, timeout: float = 0) -> Optional[Carried[Any]]:
        """``BLPOP``: a carried ``(key, value)``, or ``None`` on timeout."""
        return self._popped(self.client.blpop(keys, timeout))

    def rpop(self, name: Any, count: Optional[int] = None) -> Any:
        """``RPOP``: a carried value (a list of them with ``count``), or ``None``."""
        return self._values(name, self.client.rpop(name, count), count)

    def lpop(self, name: Any, count: Optional[int] = None) -> Any:
        """``LPOP``: a carried value (a list of them with ``count``), or ``None``."""
        return self._values(name, self.client.lpop(name, count), count)

    def xread(
        self, streams: Mapping[Any, Any], count: Optional[int] = None, block: Optional[int] = None, **kwargs: Any
    ) -> list[Carried[StreamEntry]]:
        """``XREAD``: every entry returned, carried, in order."""
        return self._entries(self.client.xread(streams, count=count, block=block, **kwargs), None)

    def xreadgroup(
        self,
        groupname: Any,
        consumername: Any,
        streams: Mapping[Any, Any],
        count: Optional[int] = None,
        block: Optional[int] = None,
        noack: bool = False,
        **kwargs: Any,
    ) -> list[Carried[StreamEntry]]:
        """``XREADGROUP``: every entry returned, carried, in order."""
        response = self.client.xreadgroup(
            groupname, consumername, streams, count=count, block=block, noack=noack, **kwargs
        )
        return self._entries(response, _text(groupname))

    def get_message(
        self, pubsub: Any, ignore_subscribe_messages: bool = False, timeout: float = 0.0
    ) -> Optional[Carried[Any]]:
        """``pubsub.get_message()``, carried; ``None`` when there is none."""
        message = pubsub.get_message(ignore_subscribe_messages=ignore_subscribe_messages, timeout=timeout)
        return None if message is None else self._message(message)

    def listen(self, pubsub: Any) -> Iterator[Carried[Any]]:
        """``pubsub.listen()``, each message carried."""
        for message in pubsub.listen():
            yield self._message(message)


class AsyncRedisHop(_Hop):
    """The same as :class:`RedisHop`, for an asyncio client (``redis.asyncio.Redis``)."""

    async def xadd(self, name: Any, fields: Mapping[Any, Any], **kwargs: Any) -> Any:
        """``XADD`` with the context in an extra field."""
        with self._write("xadd", name, [None], _fields_size(fields)) as write:
            entry_id = await self.client.xadd(name, self._fields(fields, write), **kwargs)
            write.message_id(entry_id)
        return entry_id

    async def lpush(self, name: Any, *values: Any) -> Any:
        """``LPUSH``, each value enveloped."""
        with self._write("lpush", name, values) as write:
            return await self.client.lpush(name, *self._encode(values, write))

    async def rpush(self, name: Any, *values: Any) -> Any:
        """``RPUSH``, each value enveloped."""
        with self._write("rpush", name, values) as write:
            return await self.client.rpush(name, *self._encode(values, write))

    async def publish(self, channel: Any, message: Any, **kwargs: Any) -> Any:
        """``PUBLISH`` an enveloped message."""
        with self._write("publish", channel, [message]) as write:
            return await self.client.publish(channel, *self._encode([message], write), **kwargs)

    async def brpop(self, keys: Any, timeout: float = 0) -> Optional[Carried[Any]]:
        """``BRPOP``: a carried ``(key, value)``, or ``None`` on timeout."""
        return self._popped(await self.client.brpop(keys, timeout))

    async def blpop(self, keys: Any, timeout: float = 0) -> Optional[Carried[Any]]:
        """``BLPOP``: a carried ``(key, value)``, or ``None`` on timeout."""
        return self._popped(await self.client.blpop(keys, timeout))

    async def rpop(self, name: Any, count: Optional[int] = None) -> Any:
        """``RPOP``: a carried value (a list of them with ``count``), or ``None``."""
        return self._values(name, await self.client.rpop(name, count), count)

    async def lpop(self, name: Any, count: Optional[int] = None) -> Any:
        """``LPOP``: a carried value (a list of them with ``count``), or ``None``."""
        return self._values(name, await self.client.lpop(name, count), count)

    async def xread(
        self, streams: Mapping[Any, Any], count: Optional[int] = None, block: Optional[int] = None, **kwargs: Any
    ) -> list[Carried[StreamEntry]]:
        """``XREAD``: every entry returned, carried, in order."""
        return self._entries(await self.client.xread(streams, count=count, block=block, **kwargs), None)

    async def xreadgroup(
        self,
        groupname: Any,
        consumername: Any,
        streams: Mapping[Any, Any],
        count: Optional[int] = None,
        block: Optional[int] = None,
        noack: bool = False,
        **kwargs: Any,
    ) -> list[Carried[StreamEntry]]:
        """``XREADGROUP``: every entry returned, carried, in order."""
        response = await self.client.xreadgroup(
            groupname, consumername, streams, count=count, block=block, noack=noack, **kwargs
        )
        return self._entries(response, _text(groupname))

    async def get_message(
        self, pubsub: Any, ignore_subscribe_messages: bool = False, timeout: Optional[float] = 0.0
    ) -> Optional[Carried[Any]]:
        """``await pubsub.get_message()``, carried; ``None`` when there is none."""
        message = await pubsub.get_message(ignore_subscribe_messages=ignore_subscribe_messages, timeout=timeout)
        return None if message is None else self._message(message)

    async def listen(self, pubsub: Any) -> AsyncIterator[Carried[Any]]:
        """``pubsub.listen()``, each message carried."""
        async for message in pubsub.listen():
            yield self._message(message)
