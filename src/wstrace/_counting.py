"""Message and byte counts, kept as plain integers and read by the metrics SDK at each collection.

Counting a message is two integer additions under a lock; there is no SDK call
on the hot path and nothing to flush, so every collection sees every message
already exchanged, on quiet connections too, sampled or not.
"""

from __future__ import annotations

import threading
from typing import Iterable, Optional

from opentelemetry.metrics import CallbackOptions, Observation

from wstrace._spans import IN, route as route_names


__all__ = ["LOCK", "MessageTotals", "slot"]

LOCK = threading.Lock()
"""Guards every count: connections of thread-based libraries add from several threads at once."""


def slot(direction: str, is_text: bool) -> int:
    """Index of a message's count among a route's four (direction, then type); its bytes are 4 further."""
    return (2 if direction == IN else 0) + (1 if is_text else 0)


class MessageTotals:
    """Messages and payload bytes per route, direction and type, since the instruments were made."""

    __slots__ = ("_lock", "_routes")

    def __init__(self) -> None:
        self._lock = LOCK
        self._routes: dict[Optional[str], list[int]] = {}

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

    def observe_messages(self, options: CallbackOptions) -> Iterable[Observation]:
        return self._observe(0)

    def observe_bytes(self, options: CallbackOptions) -> Iterable[Observation]:
        return self._observe(4)

    def _observe(self, offset: int) -> list[Observation]:
        with self._lock:
            routes = [(name, counts[offset : offset + 4]) for name, counts in self._routes.items()]
        return [
            Observation(value, attributes)
            for name, values in routes
            for value, attributes in zip(values, route_names(name).message_metrics, strict=True)
            if value
        ]
