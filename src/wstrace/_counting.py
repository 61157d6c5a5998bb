"""Message and byte counts, kept as plain integers and read by the metrics SDK at each collection.

Counting a message is two integer additions under a lock; there is no SDK call
on the hot path and nothing to flush, so every collection sees every message
already exchanged, on quiet connections too, sampled or not. The chunks of an
outbound stream (a reply or a run) are counted by their stream instead, on the
path every chunk takes, and added here when it ends: a collection meanwhile
adds the open streams' chunks so far (:class:`Counted`).
"""

from __future__ import annotations

import threading
from typing import Iterable, Optional, Protocol

from opentelemetry.metrics import CallbackOptions, Observation

from wstrace._spans import IN, route as route_names


__all__ = ["LOCK", "Counted", "MessageTotals", "slot"]

LOCK = threading.Lock()
"""Guards every count: connections of thread-based libraries add from several threads at once."""


def slot(direction: str, is_text: bool) -> int:
    """Index of a message's count among a route's four (direction, then type); its bytes are 4 further."""
    return (2 if direction == IN else 0) + (1 if is_text else 0)


class Counted(Protocol):
    """Messages counted elsewhere until they are added to a route's counts (an outbound stream's chunks)."""

    def partial(self) -> tuple[list[int], int, int, int, int, int]:
        """The route's counts, the slot of most of the messages (:func:`slot`), their number and bytes, and
        the number and bytes of the rest (the other type)."""
        ...


class MessageTotals:
    """Messages and payload bytes per route, direction and type, since the instruments were made."""

    __slots__ = ("_lock", "_routes", "open")

    def __init__(self) -> None:
        self._lock = LOCK
        self._routes: dict[Optional[str], list[int]] = {}
        self.open: dict[Counted, None] = {}
        """Streams counting their own chunks: added without the lock (one dict operation), removed by
        :meth:`fold` under it, so that a collection sees each chunk in exactly one place."""

    def counts(self, route: Optional[str]) -> list[int]:
        """The eight counters of ``route``, shared by every connection on it: pass them to :meth:`add`."""
        with self._lock:
            found = self._routes.get(route)
            if found is None:
                found = self._routes[route] = [0] * 8
            return found

    def add(self, counts: list[int], index: int, size: Optional[int], messages: int = 1) -> None:
        with self._lock:
            counts[index] += messages
            if size:
                counts[index + 4] += size

    def fold(self, counted: Counted) -> None:
        """Add what ``counted`` counted to its route's counts, once; it is no longer open."""
        with self._lock:
            if counted not in self.open:
                return  # folded already
            del self.open[counted]
            counts, index, messages, size, others, other_size = counted.partial()
            counts[index] += messages
            counts[index + 4] += size
            if others:
                counts[index ^ 1] += others
                counts[(index ^ 1) + 4] += other_size

    def observe_messages(self, options: CallbackOptions) -> Iterable[Observation]:
        return self._observe(0)

    def observe_bytes(self, options: CallbackOptions) -> Iterable[Observation]:
        return self._observe(4)

    def _observe(self, offset: int) -> list[Observation]:
        with self._lock:
            extra: dict[int, list[int]] = {}
            for counted in list(self.open):
                counts, index, messages, size, others, other_size = counted.partial()
                more = extra.get(id(counts))
                if more is None:
                    more = extra[id(counts)] = [0] * 8
                more[index] += messages
                more[index + 4] += size
                more[index ^ 1] += others
                more[(index ^ 1) + 4] += other_size
            routes = [
                (name, _added(counts, extra.get(id(counts)))[offset : offset + 4])
                for name, counts in self._routes.items()
            ]
        return [
            Observation(value, attributes)
            for name, values in routes
            for value, attributes in zip(values, route_names(name).message_metrics, strict=True)
            if value
        ]


def _added(counts: list[int], extra: Optional[list[int]]) -> list[int]:
    return counts if extra is None else [a + b for a, b in zip(counts, extra, strict=True)]
