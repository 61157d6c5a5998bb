"""The adapter kit for libraries that send a message as fragments (websockets' ``send(iterable)``).

A message the application sends as fragments is one message for tracing: one send span (or one chunk of a
stream) whose body size is the whole message's, and, when the envelope is in force, one envelope at the start
of its first fragment (``docs/protocol.md``, section 2). :class:`Outgoing` follows one such message;
:func:`fragments` and :func:`afragments` hand the library the application's fragments, pulled lazily and once,
with the envelope in front.
"""

from __future__ import annotations

import re
from typing import Any, AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator, Optional

from wstrace._spans import size
from wstrace._wire import SPLIT_AT, Parts, is_large
from wstrace.connection import ConnectionTracer, SendHandle


__all__ = ["SPLIT_AT", "Outgoing", "afragments", "fragments", "is_large"]

_PAYLOAD = (str, bytes, bytearray, memoryview)
_BLANKS = re.compile("[ \t\n\r]*")
_BLANKS_B = re.compile(b"[ \t\n\r]*")
# Given to the library in place of a fragment it would have refused for its type, once the fragments are
# bytes because the first was a str sent as binary: the library's own check then refuses this instead.
_NOT_BYTES = ""


class Outgoing:
    """One message the application sends as fragments, from its first fragment to the library's return.

    ``split``: the library can send the envelope prefix as a fragment of its own, so a large first fragment
    is not copied behind it. Call :meth:`end` (or use :meth:`call` / :meth:`after`) once the library returns.
    """

    __slots__ = ("ct", "encode", "handle", "held", "size", "split", "started", "text")

    def __init__(self, ct: ConnectionTracer, text: Optional[bool], *, split: bool = True) -> None:
        self.ct = ct
        self.text = text
        self.split = split
        self.started = False
        self.handle: Optional[SendHandle] = None
        self.size = 0
        self.encode = False
        """The first fragment was a str sent as binary: its envelope is bytes, so every fragment goes as UTF-8."""
        self.held: list[Any] = []
        """JSON format: the first fragments, held until they show where the member goes (:meth:`take`)."""

    def first(self, fragment: Any) -> tuple[Any, ...]:
        """Start the message with its first fragment; returns the fragments to send in its place."""
        self.started = True
        if not isinstance(fragment, _PAYLOAD):
            return (fragment,)  # not a message: the library refuses it, as it would have
        wire, self.handle = self.ct.send_start(fragment, text=self.text, split=self.split, fragment=True)
        self.size = size(fragment) or 0
        parts = tuple(wire) if type(wire) is Parts else (wire,)
        self.encode = isinstance(fragment, str) and not isinstance(parts[0], str)
        return parts

    def more(self, fragment: Any) -> Any:
        """A later fragment, as it goes to the library."""
        self.size += size(fragment) or 0
        if not self.encode:
            return fragment
        if isinstance(fragment, str):
            return fragment.encode()  # what the library does with a str fragment (and its error, if any)
        return _NOT_BYTES

    def take(self, fragment: Any) -> tuple[Any, ...]:
        """The fragments to send for one that comes before the message started: none while it is held.

        Only in the JSON format are fragments held, while those so far do not show where the envelope's
        member goes (after the object's opening brace, with a comma unless the object is empty).
        """
        held = self.held
        if self.ct.envelope == "json" and isinstance(fragment, _PAYLOAD):
            if not held or isinstance(fragment, str) == isinstance(held[0], str):
                held.append(fragment)
                head = _joined(held)
                if _undecided(head):
                    return ()
                self.held = []
                return self.first(head)
        if held:  # a fragment of another type: the library refuses it, after the ones held
            self.held = []
            return (*self.first(_joined(held)), self.more(fragment))
        return self.first(fragment)

    def rest(self) -> tuple[Any, ...]:
        """The fragments still held when the application's iterable ends: the whole message."""
        held, self.held = self.held, []
        return self.first(_joined(held)) if held else ()

    def end(self, error: Optional[BaseException] = None) -> None:
        """The library returned (or raised ``error``): end the message with its whole size."""
        handle, self.handle = self.handle, None
        if handle is not None:
            self.ct.send_end(handle, error, size=self.size)

    def call(self, wrapped: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Call the library's send, then end the message (with the error, re-raised, if it failed)."""
        try:
            result = wrapped(*args, **kwargs)
        except BaseException as exc:
            self.end(exc)
            raise
        self.end()
        return result

    async def after(self, sending: Awaitable[Any]) -> Any:
        """:meth:`call` for a send that is awaited."""
        try:
            result = await sending
        except BaseException as exc:
            self.end(exc)
            raise
        self.end()
        return result


def fragments(out: Outgoing, chunks: Iterable[Any]) -> Iterator[Any]:
    """The application's fragments, pulled one at a time as the library asks, with the envelope in front."""
    for fragment in chunks:
        if out.started:
            yield out.more(fragment)
        else:
            yield from out.take(fragment)
    yield from out.rest()


async def afragments(out: Outgoing, chunks: AsyncIterable[Any]) -> AsyncIterator[Any]:
    """:func:`fragments` for an asynchronous iterable."""
    async for fragment in chunks:
        if out.started:
            yield out.more(fragment)
        else:
            for part in out.take(fragment):
                yield part
    for part in out.rest():
        yield part


def _joined(held: list[Any]) -> Any:
    if len(held) == 1:
        return held[0]
    return "".join(held) if isinstance(held[0], str) else b"".join(held)


def _undecided(head: Any) -> bool:
    """Whether a JSON message starting with ``head`` needs more of it to place the member: ``head`` is blanks,
    or blanks, ``{`` and blanks. (Matched in place: ``head`` may be large.)"""
    blanks = _BLANKS if isinstance(head, str) else _BLANKS_B
    at = blanks.match(head).end()  # type: ignore[union-attr]  # matches the empty string
    if at == len(head):
        return True
    if head[at : at + 1] not in ("{", b"{"):
        return False
    return blanks.match(head, at + 1).end() == len(head)  # type: ignore[union-attr]
