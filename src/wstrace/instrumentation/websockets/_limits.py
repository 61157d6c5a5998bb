"""``max_size`` on a connection that carries the envelope: the application's limit holds for its payloads.

websockets checks each frame's length against ``max_size`` in its sans-I/O ``Protocol``, before reading the
frame. Once the envelope is in force, that limit is raised by the most an envelope adds, and each data frame
is checked again in ``Protocol.recv_frame``, this time its payload (the frame less its envelope) against the
application's limit: a frame over it raises ``PayloadTooBig`` there, which websockets handles as its own
(close 1009 with the same reason, ``ConnectionClosedError`` in ``recv``). The limit is raised at the moment
the protocol sees the final 101, sent (server) or received (client), before any frame after it is parsed.

The raised limit is a :class:`_Raised`, an ``int`` that carries the connection's check, in the protocol's
own attribute: a new attribute on the protocol object would cost each connection about 1.3 KB (its
``__dict__`` no longer shares its keys with the class's other instances), more than the rest of what
wstrace keeps per idle connection. ``Protocol.recv_frame`` (:func:`recv_frame_method`) finds it there; it is
patched when the first limit is raised (:data:`FRAMES`), so that no frame pays for it until the envelope is used.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any, Callable, Optional

from wstrace._limits import Limit, in_force, overhead
from wstrace._log import warn_once
from wstrace.config import Config


__all__ = [
    "FRAMES",
    "process_response_method",
    "recv_frame_method",
    "send_response_method",
    "watch_client",
    "watch_server",
]


class _Patch:
    """The ``Protocol.recv_frame`` patch, put on once, by the first connection whose limit is raised."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._install: Optional[Callable[[], None]] = None

    def arm(self, install: Optional[Callable[[], None]]) -> None:
        """``install`` patches the method (the instrumentor's, which takes it off at ``uninstrument()``);
        ``None`` disarms."""
        with self._lock:
            self._install = install

    def ensure(self) -> None:
        if self._install is None:  # patched already, or not instrumented
            return
        with self._lock:
            install, self._install = self._install, None
            if install is not None:
                install()


FRAMES = _Patch()


_WATCHED: weakref.WeakKeyDictionary[Any, Config] = weakref.WeakKeyDictionary()
"""Protocols whose handshake response settles the limit, until it does. The class's methods look them up
here: nothing is set on, or read from, the protocol object's own ``__dict__``, which would move every attribute
read of that object, many per frame, off CPython's fast path (about 8,500 instructions per echo round trip on
the server, measured with ``benchmarks.instructions``)."""


def watch_server(protocol: Any, config: Config) -> None:
    """Before the 101 goes out: the response that ``send_response`` sends settles the limit."""
    _watch(protocol, config)


def watch_client(protocol: Any, config: Config) -> None:
    """Before the handshake: the response that ``process_response`` accepts settles the limit.

    It runs as the response is parsed, before the frames that came in the same read.
    """
    _watch(protocol, config)


def _watch(protocol: Any, config: Config) -> None:
    if config.envelope == "off":
        return
    try:
        _WATCHED[protocol] = config
    except TypeError as exc:  # not websockets' own protocol object: its limit is left alone
        warn_once("watching websockets' max_size", exc)


def send_response_method(original: Callable[[Any, Any], None]) -> Callable[[Any, Any], None]:
    """``ServerProtocol.send_response``: a 101 to a watched connection settles its limit first."""

    def send_response(self: Any, response: Any) -> None:
        config = _WATCHED.pop(self, None) if _WATCHED else None
        if config is not None and getattr(response, "status_code", None) == 101:
            _settle(self, config, response.headers)
        original(self, response)

    return send_response


def process_response_method(original: Callable[[Any, Any], None]) -> Callable[[Any, Any], None]:
    """``ClientProtocol.process_response``: a response websockets accepts settles a watched connection's limit."""

    def process_response(self: Any, response: Any) -> None:
        config = _WATCHED.pop(self, None) if _WATCHED else None
        original(self, response)  # raises InvalidHandshake for a response websockets refuses
        if config is not None:
            _settle(self, config, response.headers)

    return process_response


def _settle(protocol: Any, config: Config, headers: Any) -> None:
    try:
        fmt = in_force(config, headers)
        if fmt is None:
            return
        names = _NEW if hasattr(protocol, _NEW[0]) else _OLD
        message = getattr(protocol, names[0])
        fragment = getattr(protocol, names[2], None) if names[2] else None
        if message is None and fragment is None:
            return  # no limit at all
        extra = overhead(config, fmt)
        check = _Check(protocol, names, config, fmt, message, fragment)
        FRAMES.ensure()
        if message is not None:
            setattr(protocol, names[0], _Raised(message + extra, check))
        if fragment is not None:
            # The check rides on the message limit when there is one, else on this one.
            setattr(protocol, names[2], _Raised(fragment + extra, check) if message is None else fragment + extra)
    except Exception as exc:  # the library's limit stays as it was
        warn_once("raising websockets' max_size by the envelope", exc)


class _Raised(int):
    """A limit raised by the envelope's most, carrying the check of the application's own limit."""

    def __new__(cls, value: int, check: _Check) -> _Raised:
        raised = super().__new__(cls, value)
        raised.check = check
        return raised

    check: _Check


def recv_frame_method(original: Callable[[Any, Any], None]) -> Callable[[Any, Any], None]:
    """``Protocol.recv_frame``: a frame of a connection whose limit the envelope raised is checked first."""
    message, _, fragment = _names()

    def recv_frame(self: Any, frame: Any) -> None:
        raised = getattr(self, message, None)
        if raised is None and fragment:
            raised = getattr(self, fragment, None)
        if type(raised) is _Raised:
            raised.check(frame)
        original(self, frame)

    return recv_frame


_NEW = ("max_message_size", "current_size", "max_fragment_size")
"""websockets 16 and later: a message limit, an optional fragment limit, the size read so far."""
_OLD = ("max_size", "cur_size", "")
"""websockets 15: ``max_size`` and ``cur_size``."""


def _names() -> tuple[str, str, str]:
    import websockets.protocol  # noqa: PLC0415 - loaded with the instrumentation

    source = getattr(websockets.protocol.Protocol.__init__, "__code__", None)
    return _NEW if source is not None and _NEW[0] in source.co_names else _OLD


class _Check:
    """``Protocol.recv_frame`` for one connection: the application's limits, on payload bytes.

    The rules are websockets' own (``Protocol.parse``), counted without the envelope: a message's payload
    at most ``message`` bytes, each frame's at most ``fragment``; a fragmented message's envelope is at
    the start of its first frame. Over a limit, ``PayloadTooBig`` is raised with the sizes websockets
    would name without the envelope, so that the close reason is the same.
    """

    __slots__ = (
        "_compressed",
        "_envelope",
        "_fragment",
        "_limit",
        "_message",
        "_names",
        "_protocol",
    )

    def __init__(
        self,
        protocol: Any,
        names: tuple[str, str, str],
        config: Config,
        fmt: Any,
        message: Optional[int],
        fragment: Optional[int],
    ) -> None:
        self._protocol = protocol
        self._names = names
        self._message = message
        self._fragment = fragment
        smallest = min(x for x in (message, fragment) if x is not None)
        self._limit = Limit(smallest)
        self._limit.settle(config, fmt)
        self._envelope = 0
        """Envelope bytes at the start of the fragmented message being read."""
        self._compressed = any(getattr(e, "name", None) == "permessage-deflate" for e in protocol.extensions)
        """Frames arrive compressed (websockets, aiohttp and tornado compress every data frame once
        permessage-deflate is agreed): websockets then finds a payload too big while inflating it, and names
        no frame size in the reason."""

    def __call__(self, frame: Any) -> None:
        opcode = int(frame.opcode)
        if opcode in (1, 2):  # TEXT, BINARY: a message starts
            data = frame.data
            if frame.fin:
                if len(data) > self._limit.limit:
                    self._check(self._limit.payload_size(data), None)
            else:
                payload = self._limit.payload_size(data)
                self._envelope = len(data) - payload
                self._check(payload, None)
        elif opcode == 0:  # CONT
            read = getattr(self._protocol, self._names[1], None)
            if read is not None:
                self._check(len(frame.data), read - self._envelope)

    def _check(self, length: int, read: Optional[int]) -> None:
        """Raise websockets' ``PayloadTooBig`` if a frame of ``length`` payload bytes, after ``read``, is over."""
        allowed = None
        if self._message is not None:
            allowed = self._message if read is None else self._message - read
        if self._fragment is not None:
            allowed = self._fragment if allowed is None else min(allowed, self._fragment)
        if allowed is None or length <= allowed:
            return
        from websockets.exceptions import PayloadTooBig  # noqa: PLC0415 - loaded with the connection

        # websockets adds what was read so far to the exception (set_current_size): what it read of the payload.
        setattr(self._protocol, self._names[1], read)
        raise PayloadTooBig(None if self._compressed else length, allowed)
