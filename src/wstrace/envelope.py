"""The message envelope: trace context carried inside WebSocket data frames.

Sans-I/O and standard library only. The wire format is specified in
``docs/protocol.md``; this module is its reference implementation.

Two framings carry the same header, a ``key=value&key=value`` list whose keys
and values are percent-encoded ASCII (the propagator's carrier):

* **text frames** (``str``, or UTF-8 ``bytes`` sent as text)::

      U+001E "wt1" <header> U+001E <payload>

* **binary frames**::

      1E 77 74 01 <header length: uint16 big-endian> <header> <payload>

A third, opt-in form puts the carrier into a named member of a JSON object,
for peers that already speak JSON: ``{"_wstrace":{"traceparent":"…"},…}``.

Encoders never parse or re-encode the user's payload: they only prepend (or,
in JSON mode, insert right after the opening brace). Decoders never raise on
foreign input: anything that is not exactly a valid envelope comes back
unchanged with ``carrier=None``. :func:`parse` is the strict variant that
raises :class:`~wstrace.exceptions.EnvelopeDecodeError`.

A decoder that knows the frame type (``text=True`` or ``False``) accepts only
that type's layout; ``text=None`` means it is not known: a ``str`` is a text
frame, ``bytes`` may hold either layout.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Mapping, Union
from urllib.parse import quote, unquote

from wstrace.exceptions import EnvelopeDecodeError, EnvelopeEncodeError


__all__ = [
    "BINARY_MAGIC",
    "DEFAULT_JSON_FIELD",
    "DEFAULT_MAX_HEADER_BYTES",
    "TEXT_MAGIC",
    "Decoded",
    "binary_prefix",
    "decode",
    "decode_json_field",
    "encode",
    "encode_binary",
    "encode_json_field",
    "encode_text",
    "parse",
    "text_prefix",
]

Payload = Union[str, bytes]
"""What an application sends or receives: text as ``str``, binary as ``bytes``."""

TEXT_MAGIC = "\x1ewt1"
"""Prefix of a version 1 text envelope (record separator, ``wt``, version)."""

_TEXT_MAGIC_B = TEXT_MAGIC.encode("ascii")
_SEP = "\x1e"
_SEP_B = b"\x1e"

BINARY_MAGIC = b"\x1ewt\x01"
"""Prefix of a version 1 binary envelope (record separator, ``wt``, version)."""

_BINARY_PREFIX_LEN = len(BINARY_MAGIC) + 2

DEFAULT_MAX_HEADER_BYTES = 8192
"""Largest header an encoder writes or a decoder accepts, in bytes.

W3C allows 512 bytes of ``tracestate`` and 8192 of ``baggage``; larger
headers are refused when encoding and passed through untouched when decoding.
"""

_HARD_MAX_HEADER_BYTES = 0xFFFF  # the binary length field is 16 bits

DEFAULT_JSON_FIELD = "_wstrace"
"""Member name that carries the context in the JSON-field form."""

# Keys are HTTP-header-like tokens; values may be any text once percent-decoded.
_KEY_RE = r"[a-z0-9][a-z0-9_.\-]*"
_KEY = re.compile(_KEY_RE + r"\Z")
# Values made only of these need no percent-encoding (W3C traceparent, most tracestate and baggage).
_UNRESERVED = re.compile(r"[A-Za-z0-9_.\-~]*\Z")
# The header grammar of docs/protocol.md section 7, exactly, checked in two quick passes: only the characters
# of keys, values, "=" and "&", and every "%" starts a %XX escape. Items are then split and checked one by one.
_HEADER_CHARS = re.compile(r"[A-Za-z0-9_.\-~%=&]*\Z")
_STRAY_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_JSON_WS = " \t\n\r"
_JSON_WS_B = b" \t\n\r"
# The JSON carrier object of section 6, exactly: no blanks, printable ASCII only, keys written
# literally (no escapes), values JSON strings whose escapes are those of RFC 8259.
_JSON_STRING_RE = r'"[ !#-\[\]-~]*(?:\\(?:["\\/bfnrt]|u[0-9A-Fa-f]{4})[ !#-\[\]-~]*)*"'  # normal* (escape normal*)*
_JSON_MEMBER_RE = rf'"{_KEY_RE}":{_JSON_STRING_RE}'
_JSON_MEMBER = re.compile(rf'"({_KEY_RE})":({_JSON_STRING_RE})')
_JSON_CARRIER = re.compile(rf"\{{(?:{_JSON_MEMBER_RE}(?:,{_JSON_MEMBER_RE})*)?\}}")


class _CarrierTooLarge(EnvelopeEncodeError):
    """The carrier is valid but does not fit under the cap: the sender sends an empty envelope."""


@dataclass(frozen=True)
class Decoded:
    """Result of decoding one frame."""

    payload: Payload
    """The application's payload, with the envelope removed."""

    carrier: dict[str, str] | None
    """The propagation carrier, or ``None`` when the frame held no envelope."""

    @property
    def enveloped(self) -> bool:
        """Whether the frame was an envelope (possibly with an empty carrier)."""
        return self.carrier is not None


def _check_max(max_header: int) -> int:
    if not 0 <= max_header <= _HARD_MAX_HEADER_BYTES:
        raise EnvelopeEncodeError(f"max_header must be within 0..{_HARD_MAX_HEADER_BYTES}, got {max_header}")
    return max_header


def _checked(key: object, value: object) -> None:
    """Refuse a carrier item no envelope can hold: keys are lowercase tokens, values text with a UTF-8 form."""
    if not isinstance(key, str) or not isinstance(value, str):
        raise EnvelopeEncodeError("carrier keys and values must be str")
    if not _KEY.match(key):
        raise EnvelopeEncodeError(f"carrier key {key!r} is not a lowercase token")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:  # a lone surrogate has no UTF-8 form
            raise EnvelopeEncodeError(f"carrier value of {key!r} is not encodable as UTF-8") from exc


def _header(carrier: Mapping[str, str] | None, max_header: int) -> str:
    if not carrier:
        return ""
    parts = []
    for key, value in carrier.items():
        _checked(key, value)
        if _UNRESERVED.match(value):
            parts.append(f"{key}={value}")
        else:
            parts.append(f"{key}={quote(value, safe='')}")
    header = "&".join(parts)
    if len(header) > _check_max(max_header):
        raise _CarrierTooLarge(f"carrier of {len(header)} bytes exceeds the {max_header}-byte header cap")
    return header


def _parse_header(header: str) -> dict[str, str]:
    if not header:
        return {}
    if not _HEADER_CHARS.match(header) or ("%" in header and _STRAY_PERCENT.search(header)):
        raise EnvelopeDecodeError("header holds characters outside the header grammar")
    carrier: dict[str, str] = {}
    for part in header.split("&"):
        key, eq, value = part.partition("=")
        if not eq or "=" in value or not _KEY.match(key):
            raise EnvelopeDecodeError(f"malformed header item {part[:40]!r}")
        if key in carrier:
            raise EnvelopeDecodeError(f"header key {key!r} repeats")
        if "%" in value:
            try:
                value = unquote(value, errors="strict")
            except UnicodeDecodeError as exc:
                raise EnvelopeDecodeError("header value is not UTF-8 once percent-decoded") from exc
        carrier[key] = value
    return carrier


_EMPTY_TEXT_PREFIX = f"{TEXT_MAGIC}{_SEP}"
_EMPTY_BINARY_PREFIX = BINARY_MAGIC + b"\x00\x00"


def text_prefix(carrier: Mapping[str, str] | None, *, max_header: int = DEFAULT_MAX_HEADER_BYTES) -> str:
    """Everything a text envelope puts before the payload; for senders that reuse one carrier."""
    if not carrier:
        _check_max(max_header)
        return _EMPTY_TEXT_PREFIX
    return f"{TEXT_MAGIC}{_header(carrier, max_header)}{_SEP}"


def binary_prefix(carrier: Mapping[str, str] | None, *, max_header: int = DEFAULT_MAX_HEADER_BYTES) -> bytes:
    """Everything a binary envelope puts before the payload; for senders that reuse one carrier."""
    if not carrier:
        _check_max(max_header)
        return _EMPTY_BINARY_PREFIX
    raw = _header(carrier, max_header).encode("ascii")
    return b"".join((BINARY_MAGIC, len(raw).to_bytes(2, "big"), raw))


def encode_text(
    payload: Payload, carrier: Mapping[str, str] | None, *, max_header: int = DEFAULT_MAX_HEADER_BYTES
) -> Payload:
    """Wrap a text-frame payload; the result has the payload's type (``str`` or UTF-8 ``bytes``)."""
    prefix = text_prefix(carrier, max_header=max_header)
    if isinstance(payload, str):
        return prefix + payload
    if isinstance(payload, (bytes, bytearray, memoryview)):
        return b"".join((prefix.encode("ascii"), payload))
    raise EnvelopeEncodeError(f"cannot encode a {type(payload).__name__} payload")


def encode_binary(
    payload: bytes | bytearray | memoryview,
    carrier: Mapping[str, str] | None,
    *,
    max_header: int = DEFAULT_MAX_HEADER_BYTES,
) -> bytes:
    """Wrap a binary-frame payload."""
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise EnvelopeEncodeError(f"cannot encode a {type(payload).__name__} payload as binary")
    return b"".join((binary_prefix(carrier, max_header=max_header), payload))


def encode(
    payload: Payload | bytearray | memoryview,
    carrier: Mapping[str, str] | None,
    *,
    text: bool | None = None,
    max_header: int = DEFAULT_MAX_HEADER_BYTES,
) -> Payload:
    """Wrap a payload in the framing of its frame type.

    ``text`` defaults to ``isinstance(payload, str)``, as WebSocket libraries
    choose the frame type.
    """
    if text is None:
        text = isinstance(payload, str)
    if text:
        return encode_text(payload if isinstance(payload, str) else bytes(payload), carrier, max_header=max_header)
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    return encode_binary(payload, carrier, max_header=max_header)


def parse(wire: Payload, *, text: bool | None = None, max_header: int = DEFAULT_MAX_HEADER_BYTES) -> Decoded:
    """Strictly decode a frame.

    Returns ``Decoded(wire, None)`` for a frame that does not start with the
    envelope prefix of its type, and raises :class:`EnvelopeDecodeError` for
    one that does but is malformed, truncated, or larger than ``max_header``.
    ``text`` is the frame type, as for :func:`decode`.
    """
    return Decoded(*_parse_parts(wire, max_header, text))


def _parse_parts(wire: Payload, max_header: int, text: bool | None = None) -> tuple[Payload, dict[str, str] | None]:
    """:func:`parse` as a plain ``(payload, carrier)`` pair."""
    if isinstance(wire, str):
        if text is False or not wire.startswith(TEXT_MAGIC):
            return wire, None  # a binary frame is never a str: nothing to strip
        end = wire.find(_SEP, len(TEXT_MAGIC), len(TEXT_MAGIC) + max_header + 1)
        if end < 0:
            raise EnvelopeDecodeError("text envelope has no header terminator within the cap")
        return wire[end + 1 :], _parse_header(wire[len(TEXT_MAGIC) : end])
    if not isinstance(wire, (bytes, bytearray, memoryview)):
        raise EnvelopeDecodeError(f"cannot decode a {type(wire).__name__}")
    wire = bytes(wire)
    if text is not True and wire.startswith(BINARY_MAGIC):
        if len(wire) < _BINARY_PREFIX_LEN:
            raise EnvelopeDecodeError("binary envelope truncated before its header length")
        size = int.from_bytes(wire[len(BINARY_MAGIC) : _BINARY_PREFIX_LEN], "big")
        if size > max_header:
            raise EnvelopeDecodeError(f"header of {size} bytes exceeds the {max_header}-byte cap")
        end = _BINARY_PREFIX_LEN + size
        if len(wire) < end:
            raise EnvelopeDecodeError("binary envelope truncated inside its header")
        return wire[end:], _parse_header(_ascii(wire[_BINARY_PREFIX_LEN:end]))
    if text is not False and wire.startswith(_TEXT_MAGIC_B):
        # A text frame received as bytes (websocket-client, or websockets' recv(decode=False)).
        end = wire.find(_SEP_B, len(_TEXT_MAGIC_B), len(_TEXT_MAGIC_B) + max_header + 1)
        if end < 0:
            raise EnvelopeDecodeError("text envelope has no header terminator within the cap")
        return wire[end + 1 :], _parse_header(_ascii(wire[len(_TEXT_MAGIC_B) : end]))
    return wire, None


def _ascii(raw: bytes) -> str:
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError as exc:
        raise EnvelopeDecodeError("header is not ASCII") from exc


def decode(wire: Payload, *, text: bool | None = None, max_header: int = DEFAULT_MAX_HEADER_BYTES) -> Decoded:
    """Decode a frame without ever raising.

    A valid envelope yields its payload and carrier. Anything else (no prefix,
    a malformed, truncated or oversized header, an unknown version, the other
    frame type's layout) yields the frame unchanged and ``carrier=None``, so
    no data is ever lost.

    ``text`` is the frame type: ``True`` accepts only the text layout (in a
    ``str`` or its UTF-8 ``bytes``), ``False`` only the binary one. ``None``
    (the type is not known): a ``str`` is a text frame, and ``bytes`` are
    accepted in either layout.
    """
    return Decoded(*_decode_parts(wire, max_header, text))


def _decode_parts(
    wire: Payload, max_header: int = DEFAULT_MAX_HEADER_BYTES, text: bool | None = None
) -> tuple[Payload, dict[str, str] | None]:
    """:func:`decode` as a plain ``(payload, carrier)`` pair, for the session's hot path."""
    try:
        return _parse_parts(wire, max_header, text)
    except EnvelopeDecodeError:
        return wire, None


def _json_start(wire: Payload) -> int:
    """Index of the opening brace of a JSON object payload, or -1."""
    i = 0
    n = len(wire)
    if isinstance(wire, str):
        while i < n and wire[i] in _JSON_WS:
            i += 1
        return i if i < n and wire[i] == "{" else -1
    while i < n and wire[i] in _JSON_WS_B:
        i += 1
    return i if i < n and wire[i] == 0x7B else -1


def encode_json_field(
    payload: Payload,
    carrier: Mapping[str, str] | None,
    *,
    field: str = DEFAULT_JSON_FIELD,
    max_header: int = DEFAULT_MAX_HEADER_BYTES,
) -> Payload:
    """Insert ``"<field>":{carrier}`` as the first member of a JSON object payload.

    A payload that is not a JSON object (by its first non-blank character) is
    returned unchanged: it cannot carry context in this form. The rest of the
    payload is never parsed, so invalid JSON after the brace stays as it was.
    ``max_header`` caps the carrier object's JSON text, from ``{`` to ``}``.
    """
    if not isinstance(payload, (str, bytes)):
        raise EnvelopeEncodeError(f"cannot encode a {type(payload).__name__} payload")
    start = _json_start(payload)
    if start < 0:
        return payload
    _check_max(max_header)
    items = dict(carrier or {})
    for key, value in items.items():
        _checked(key, value)
    # ensure_ascii: '"', '\\' and every character outside U+0020..U+007E escaped, so the object is printable ASCII.
    obj = json.dumps(items, separators=(",", ":"))
    if len(obj) > max_header:
        raise _CarrierTooLarge(f"carrier of {len(obj)} bytes of JSON exceeds the {max_header}-byte header cap")
    member = json.dumps(field) + ":" + obj
    if isinstance(payload, str):
        rest = payload[start + 1 :]
        comma = "" if rest.lstrip(_JSON_WS)[:1] == "}" else ","
        return f"{payload[: start + 1]}{member}{comma}{rest}"
    rest_b = payload[start + 1 :]
    comma = "" if rest_b.lstrip(_JSON_WS_B)[:1] == b"}" else ","
    return b"".join((payload[: start + 1], (member + comma).encode("ascii"), rest_b))


def decode_json_field(
    wire: Payload, *, field: str = DEFAULT_JSON_FIELD, max_header: int = DEFAULT_MAX_HEADER_BYTES
) -> Decoded:
    """Remove the carrier member that :func:`encode_json_field` inserted; never raises.

    Only the canonical form is recognised: the member comes first, right after
    the brace, with no blanks around its key and colon nor inside the carrier
    object, which is printable ASCII, at most ``max_header`` bytes long, with
    unescaped keys that follow the key grammar, no key twice, and string values
    only; a comma follows it unless only blanks and ``}`` do. Anything else is
    returned unchanged with ``carrier=None``.
    """
    if not isinstance(wire, (str, bytes)):
        return Decoded(wire, None)
    start = _json_start(wire)
    if start < 0:
        return Decoded(wire, None)
    key = json.dumps(field) + ":"
    value_at = start + 1 + len(key)
    if isinstance(wire, str):
        if not wire.startswith(key, start + 1):
            return Decoded(wire, None)
        window = wire[value_at : value_at + max_header]
    else:
        if not wire.startswith(key.encode("ascii"), start + 1):
            return Decoded(wire, None)
        # One character per byte, so offsets match; a byte over 0x7E fails the grammar.
        window = wire[value_at : value_at + max_header].decode("latin-1")
    found = _JSON_CARRIER.match(window)
    carrier = _json_members(found.group()) if found else None
    if found is None or carrier is None:
        return Decoded(wire, None)
    end = value_at + found.end()
    if isinstance(wire, str):
        rest = wire[end:]
        if rest[:1] == ",":
            rest = rest[1:]
            if rest.lstrip(_JSON_WS)[:1] == "}":
                return Decoded(wire, None)  # the encoder writes no comma before a closing brace
        elif rest.lstrip(_JSON_WS)[:1] != "}":
            return Decoded(wire, None)
        return Decoded(wire[: start + 1] + rest, carrier)
    rest_b = wire[end:]
    if rest_b[:1] == b",":
        rest_b = rest_b[1:]
        if rest_b.lstrip(_JSON_WS_B)[:1] == b"}":
            return Decoded(wire, None)
    elif rest_b.lstrip(_JSON_WS_B)[:1] != b"}":
        return Decoded(wire, None)
    return Decoded(wire[: start + 1] + rest_b, carrier)


def _json_members(obj: str) -> dict[str, str] | None:
    """The carrier in a carrier object that matched the grammar; ``None`` if a key repeats or a value is not
    Unicode text (an escaped lone surrogate)."""
    carrier: dict[str, str] = {}
    for member in _JSON_MEMBER.finditer(obj):
        key, raw = member.groups()
        if key in carrier:
            return None
        if "\\" not in raw:
            carrier[key] = raw[1:-1]
            continue
        value = json.loads(raw)
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return None
        carrier[key] = value
    return carrier
