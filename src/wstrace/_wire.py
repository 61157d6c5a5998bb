"""The envelope on a connection: wrapping what the application sends, stripping what it receives.

A :class:`Wire` holds no per-connection state (format, cap and JSON field
only), so connections with the same settings share one. A stream's envelope
prefix, the same for every chunk, is encoded once and kept in its
:class:`Prefixes`. For a library that can send a message as fragments, the
:func:`split_wire` of a connection's wire hands a large payload back as
:class:`Parts` (the envelope prefix, then the payload), so that the payload is
never copied behind its prefix.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, TypeVar

from opentelemetry import trace
from opentelemetry.trace import Span

from wstrace import envelope as codec, propagation
from wstrace._log import warn_once
from wstrace.config import Config, EnvelopeFormat
from wstrace.exceptions import EnvelopeEncodeError


__all__ = ["SPLIT_AT", "Parts", "Prefixes", "SplitWire", "Wire", "split_wire", "wire_for"]

_P = TypeVar("_P", str, bytes)
_PAYLOAD = (str, bytes, bytearray, memoryview)


class Prefixes:
    """One stream's context, injected once, and its envelope prefixes, encoded when first needed."""

    __slots__ = ("binary", "carrier", "text")

    def __init__(self) -> None:
        self.carrier: Optional[dict[str, str]] = None
        self.text: Optional[str] = None
        self.binary: Optional[bytes] = None


class Wire:
    """The envelope format in force on a connection, and how to apply it."""

    __slots__ = ("cap", "field", "format")

    def __init__(self, fmt: EnvelopeFormat, cap: int, field: str) -> None:
        self.format = fmt
        self.cap = cap
        self.field = field

    def wrap(self, payload: Any, is_text: bool, carrier: Optional[dict[str, str]]) -> Any:
        """``payload`` in an envelope holding ``carrier``; an empty one if the carrier is over the cap.

        Something that is not a payload (a library's own frame object) goes through as it is.
        """
        if not isinstance(payload, _PAYLOAD):
            return payload
        cap = self.cap
        try:
            return self._encode(payload, is_text, carrier)
        except EnvelopeEncodeError as exc:
            # Too much baggage (or a key no envelope can hold): send the frame with an empty envelope, never drop it.
            self._dropped(exc)
            if self.format == "json":
                return codec.encode_json_field(_bytes_or_str(payload), None, field=self.field, max_header=cap)
            return codec.encode(payload, None, text=is_text, max_header=cap)

    def _encode(self, payload: Any, is_text: bool, carrier: Optional[dict[str, str]]) -> Any:
        if self.format == "json":
            return codec.encode_json_field(_bytes_or_str(payload), carrier, field=self.field, max_header=self.cap)
        return codec.encode(payload, carrier, text=is_text, max_header=self.cap)

    def wrap_empty(self, payload: Any, is_text: bool) -> Any:
        """``payload`` in an envelope with no context; never raises.

        The peer strips one envelope from every frame: a bare frame that happens
        to start like one would reach its application changed.
        """
        try:
            return self.wrap(payload, is_text, None)
        except Exception as exc:  # a str with lone surrogates sent as binary: the library refuses it too
            warn_once("encoding an empty envelope", exc)
            return payload

    def _dropped(self, exc: EnvelopeEncodeError) -> None:
        """Say once that a carrier was left out. One merely over the cap is a size, not a failure: no traceback."""
        if isinstance(exc, codec._CarrierTooLarge):
            warn_once(
                f"a carrier over the {self.cap}-byte envelope cap was sent as an empty envelope"
                " (raise max_envelope_bytes, or carry less baggage)"
            )
        else:
            warn_once("encoding the envelope", exc)

    def strip(self, wire: Any, text: Optional[bool] = None) -> tuple[Any, Optional[dict[str, str]]]:
        """The application's payload and the sender's carrier (``None`` if the frame had none).

        ``text`` is the frame type: only that type's layout is an envelope. ``None``: the library did
        not say (``bytes`` may then hold either layout).
        """
        if not isinstance(wire, (str, bytes)):
            return wire, None
        if self.format == "json":
            decoded = codec.decode_json_field(wire, field=self.field, max_header=self.cap)
            return decoded.payload, decoded.carrier
        return codec._decode_parts(wire, self.cap, text)

    def in_stream(self, prefixes: Prefixes, span: Span, payload: Any, is_text: bool) -> Any:
        """A stream's chunk in an envelope with the stream's context, encoded once per stream."""
        if is_text and type(payload) is str:
            prefix = prefixes.text  # only ever set below, for the frame format
            if prefix is not None:
                return prefix + payload  # every chunk of a text stream after its first
        if self.format != "frame" or not isinstance(payload, _PAYLOAD):
            return self.wrap(payload, is_text, propagation.inject(trace.set_span_in_context(span)))
        carrier = prefixes.carrier
        if carrier is None:
            carrier = prefixes.carrier = propagation.inject(trace.set_span_in_context(span))
        if is_text:
            prefix = prefixes.text
            if prefix is None:
                prefix = prefixes.text = self._prefix(codec.text_prefix, carrier)
            if isinstance(payload, str):
                return prefix + payload
            return prefix.encode("ascii") + bytes(payload)
        prefix_b = prefixes.binary
        if prefix_b is None:
            prefix_b = prefixes.binary = self._prefix(codec.binary_prefix, carrier)
        if isinstance(payload, str):
            payload = payload.encode("utf-8")
        return prefix_b + bytes(payload)

    def _prefix(self, encode: Callable[..., _P], carrier: dict[str, str]) -> _P:
        """A stream's envelope prefix; an empty envelope's if the carrier is over the cap."""
        try:
            return encode(carrier, max_header=self.cap)
        except EnvelopeEncodeError as exc:
            self._dropped(exc)
            return encode(None)


def _bytes_or_str(payload: Any) -> Any:
    return bytes(payload) if isinstance(payload, (bytearray, memoryview)) else payload


_WIRES: dict[tuple[EnvelopeFormat, int, str], Wire] = {}


def wire_for(config: Config, fmt: EnvelopeFormat) -> Wire:
    """The shared :class:`Wire` for ``fmt`` under ``config``'s cap and JSON field."""
    key = (fmt, config.max_envelope_bytes, config.json_field)
    found = _WIRES.get(key)
    if found is None:
        if len(_WIRES) > 64:  # settings come from instrument() calls: a handful per process
            _WIRES.clear()
        found = _WIRES[key] = Wire(*key)
    return found


SPLIT_AT = 1 << 20
"""Payload length (bytes, or characters of a ``str``) from which a :class:`SplitWire` sends the envelope prefix
as a fragment of its own. Below it, copying the payload behind the prefix costs less CPU than two more frames
and the receiver's reassembly (``docs/performance.md``, "Large messages"), and the copy is small."""


class Parts(tuple[Any, Any]):
    """A message to send as two fragments, in this order: its envelope prefix, then its payload (unchanged, or
    a ``str`` sent as binary encoded to UTF-8 as the library would). The peer reassembles them (RFC 6455)."""

    __slots__ = ()


class SplitWire(Wire):
    """A connection's envelope, for a library that can send a message as fragments.

    ``wrap`` and ``in_stream`` return :class:`Parts` for a payload of :data:`SPLIT_AT` or more in the framed
    format, instead of a copy of the payload behind its prefix; anything else as :class:`Wire` does. (The JSON
    format inserts its member inside the payload: it always copies.)
    """

    __slots__ = ()

    def wrap(self, payload: Any, is_text: bool, carrier: Optional[dict[str, str]]) -> Any:
        if self.format != "frame" or not is_large(payload):
            return super().wrap(payload, is_text, carrier)
        # The envelope of an empty payload is exactly the prefix (or an empty envelope's, over the cap).
        return _parts(super().wrap(_empty(payload, is_text), is_text, carrier), payload, is_text)

    def in_stream(self, prefixes: Prefixes, span: Span, payload: Any, is_text: bool) -> Any:
        if self.format != "frame" or not is_large(payload):
            return super().in_stream(prefixes, span, payload, is_text)
        return _parts(super().in_stream(prefixes, span, _empty(payload, is_text), is_text), payload, is_text)


def is_large(payload: Any) -> bool:
    """Whether ``payload`` is a payload of :data:`SPLIT_AT` or more (bytes, or characters of a ``str``)."""
    if isinstance(payload, memoryview):
        return payload.nbytes >= SPLIT_AT
    return isinstance(payload, (str, bytes, bytearray)) and len(payload) >= SPLIT_AT


def _empty(payload: Any, is_text: bool) -> Any:
    return "" if is_text and isinstance(payload, str) else b""


def _parts(prefix: Any, payload: Any, is_text: bool) -> Parts:
    if not is_text and isinstance(payload, str):
        payload = payload.encode("utf-8")  # what the library sends for a str in a binary frame
    return Parts((prefix, payload))


_SPLIT_WIRES: dict[tuple[EnvelopeFormat, int, str], SplitWire] = {}


def split_wire(wire: Wire) -> SplitWire:
    """The shared :class:`SplitWire` with ``wire``'s format, cap and JSON field."""
    key = (wire.format, wire.cap, wire.field)
    found = _SPLIT_WIRES.get(key)
    if found is None:
        if len(_SPLIT_WIRES) > 64:
            _SPLIT_WIRES.clear()
        found = _SPLIT_WIRES[key] = SplitWire(*key)
    return found
