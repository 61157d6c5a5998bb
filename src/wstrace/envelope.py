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
unchanged with ``carrier=None``. The ``parse_*`` functions are the strict
variants that raise :class:`~wstrace.exceptions.EnvelopeDecodeError`.
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
_KEY = re.compile(r"[a-z0-9][a-z0-9_.\-]*\Z")
# Values made only of these need no percent-encoding (W3C traceparent, most tracestate and baggage).
_UNRESERVED = re.compile(r"[A-Za-z0-9_.\-~]*\Z")
# A header is printable ASCII without space or separators other than & and =.
_HEADER = re.compile(r"[!#-~]*\Z")
_JSON_WS = " \t\n\r"
_JSON_WS_B = b" \t\n\r"


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


def _header(carrier: Mapping[str, str] | None, max_header: int) -> str:
    if not carrier:
        return ""
    parts = []
    for key, value in carrier.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise EnvelopeEncodeError("carrier keys and values must be str")
        if not _KEY.match(key):
            raise EnvelopeEncodeError(f"carrier key {key!r} is not a lowercase token")
        if _UNRESERVED.match(value):
            parts.append(f"{key}={value}")
            continue
        try:
            parts.append(f"{key}={quote(value, safe='')}")
        except UnicodeEncodeError as exc:  # a lone surrogate has no UTF-8 form
            raise EnvelopeEncodeError(f"carrier value of {key!r} is not encodable as UTF-8") from exc
    header = "&".join(parts)
    if len(header) > _check_max(max_header):
        raise EnvelopeEncodeError(f"carrier of {len(header)} bytes exceeds the {max_header}-byte header cap")
    return header


def _parse_header(header: str) -> dict[str, str]:
    if not header:
        return {}
    if not _HEADER.match(header):
        raise EnvelopeDecodeError("header holds characters outside printable ASCII")
    carrier: dict[str, str] = {}
    for part in header.split("&"):
        key, eq, value = part.partition("=")
        if not eq or key in carrier or not _KEY.match(key):
            raise EnvelopeDecodeError(f"malformed header item {part[:40]!r}")
        if "%" not in value:
            carrier[key] = value
            continue
        try:
            carrier[key] = unquote(value, errors="strict")
        except UnicodeDecodeError as exc:
            raise EnvelopeDecodeError("header value is not UTF-8 once percent-decoded") from exc
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


def parse(wire: Payload, *, max_header: int = DEFAULT_MAX_HEADER_BYTES) -> Decoded:
    """Strictly decode a frame.

    Returns ``Decoded(wire, None)`` for a frame that does not start with an
    envelope prefix, and raises :class:`EnvelopeDecodeError` for one that does
    but is malformed, truncated, or larger than ``max_header``.
    """
    return Decoded(*_parse_parts(wire, max_header))


def _parse_parts(wire: Payload, max_header: int) -> tuple[Payload, dict[str, str] | None]:
    """:func:`parse` as a plain ``(payload, carrier)`` pair."""
    if isinstance(wire, str):
        if not wire.startswith(TEXT_MAGIC):
            return wire, None
        end = wire.find(_SEP, len(TEXT_MAGIC), len(TEXT_MAGIC) + max_header + 1)
        if end < 0:
            raise EnvelopeDecodeError("text envelope has no header terminator within the cap")
        return wire[end + 1 :], _parse_header(wire[len(TEXT_MAGIC) : end])
    if not isinstance(wire, (bytes, bytearray, memoryview)):
        raise EnvelopeDecodeError(f"cannot decode a {type(wire).__name__}")
    wire = bytes(wire)
    if wire.startswith(BINARY_MAGIC):
        if len(wire) < _BINARY_PREFIX_LEN:
            raise EnvelopeDecodeError("binary envelope truncated before its header length")
        size = int.from_bytes(wire[len(BINARY_MAGIC) : _BINARY_PREFIX_LEN], "big")
        if size > max_header:
            raise EnvelopeDecodeError(f"header of {size} bytes exceeds the {max_header}-byte cap")
        end = _BINARY_PREFIX_LEN + size
        if len(wire) < end:
            raise EnvelopeDecodeError("binary envelope truncated inside its header")
        return wire[end:], _parse_header(_ascii(wire[_BINARY_PREFIX_LEN:end]))
    if wire.startswith(_TEXT_MAGIC_B):
        # A text frame received as bytes (for example recv(decode=False)).
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


def decode(wire: Payload, *, max_header: int = DEFAULT_MAX_HEADER_BYTES) -> Decoded:
    """Decode a frame without ever raising.

    A valid envelope yields its payload and carrier. Anything else (no prefix,
    a malformed, truncated or oversized header, an unknown version) yields the
    frame unchanged and ``carrier=None``, so no data is ever lost.
    """
    return Decoded(*_decode_parts(wire, max_header))


def _decode_parts(wire: Payload, max_header: int = DEFAULT_MAX_HEADER_BYTES) -> tuple[Payload, dict[str, str] | None]:
    """:func:`decode` as a plain ``(payload, carrier)`` pair, for the session's hot path."""
    try:
        return _parse_parts(wire, max_header)
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
    """
    if not isinstance(payload, (str, bytes)):
        raise EnvelopeEncodeError(f"cannot encode a {type(payload).__name__} payload")
    start = _json_start(payload)
    if start < 0:
        return payload
    _header(carrier, max_header)  # same validation and cap as the framed forms
    obj = json.dumps(dict(carrier or {}), separators=(",", ":"))
    if len(obj) > max_header:  # the decoder applies the cap to the object's JSON text
        raise EnvelopeEncodeError(f"carrier of {len(obj)} bytes of JSON exceeds the {max_header}-byte header cap")
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
    the brace, with no blanks around its key and colon. Anything else is
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
        window = wire[value_at : value_at + max_header + 2]
    else:
        if not wire.startswith(key.encode("ascii"), start + 1):
            return Decoded(wire, None)
        # ASCII with replacement keeps one character per byte, so offsets match.
        window = wire[value_at : value_at + max_header + 2].decode("ascii", errors="replace")
    carrier, length = _json_carrier(window, max_header)
    if carrier is None:
        return Decoded(wire, None)
    end = value_at + length
    comma = window[length : length + 1] == ","
    if comma:
        end += 1  # the member goes with its comma
    # Without a comma the encoder saw an empty object, so only blanks and "}" may follow.
    if isinstance(wire, str):
        if not comma and wire[end:].lstrip(_JSON_WS)[:1] != "}":
            return Decoded(wire, None)
        return Decoded(wire[: start + 1] + wire[end:], carrier)
    if not comma and wire[end:].lstrip(_JSON_WS_B)[:1] != b"}":
        return Decoded(wire, None)
    return Decoded(wire[: start + 1] + wire[end:], carrier)


def _json_carrier(window: str, max_header: int) -> tuple[dict[str, str] | None, int]:
    """Parse the carrier object at the start of ``window``; ``(None, 0)`` if it is not one."""
    try:
        value, length = json.JSONDecoder().raw_decode(window)
    except (ValueError, RecursionError):  # RecursionError: deeply nested arrays or objects
        return None, 0
    if length > max_header or not isinstance(value, dict) or "\ufffd" in window[:length]:
        return None, 0
    if not all(isinstance(v, str) and _KEY.match(k) for k, v in value.items()):
        return None, 0
    return value, length
