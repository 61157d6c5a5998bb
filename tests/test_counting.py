"""Message totals (wstrace._counting): plain integers that every metrics collection reads, exactly."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any, Optional

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from wstrace._counting import MessageTotals, slot


SENT, RECEIVED = "sent", "received"


class Collected:
    """A real SDK meter provider whose two observable counters read one MessageTotals."""

    def __init__(self) -> None:
        self.totals = MessageTotals()
        self.reader = InMemoryMetricReader()
        self.provider = MeterProvider(metric_readers=[self.reader])
        meter = self.provider.get_meter("wstrace-test")
        meter.create_observable_counter("wstrace.message.count", callbacks=[self.totals.observe_messages])
        meter.create_observable_counter("wstrace.message.size", callbacks=[self.totals.observe_bytes])

    def points(self, name: str) -> dict[tuple[tuple[str, Any], ...], int]:
        data = self.reader.get_metrics_data()
        found: dict[tuple[tuple[str, Any], ...], int] = {}
        for resource in data.resource_metrics if data is not None else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        for point in metric.data.data_points:
                            found[tuple(sorted(point.attributes.items()))] = point.value
        return found


def _key(route: Optional[str], direction: str, kind: str) -> tuple[tuple[str, Any], ...]:
    attributes = {"websocket.message.direction": direction, "websocket.message.type": kind}
    if route is not None:
        attributes["http.route"] = route
    return tuple(sorted(attributes.items()))


@pytest.fixture
def collected() -> Iterator[Collected]:
    found = Collected()
    yield found
    found.provider.shutdown()


def test_slots_are_distinct_and_bytes_follow_four_further() -> None:
    slots = {(d, t): slot(d, t) for d in (SENT, RECEIVED) for t in (False, True)}
    assert slots == {(SENT, False): 0, (SENT, True): 1, (RECEIVED, False): 2, (RECEIVED, True): 3}


def test_totals_per_route_direction_and_type_are_observed(collected: Collected) -> None:
    totals = collected.totals
    chat = totals.counts("/chat")
    totals.add(chat, slot(SENT, True), 5)
    totals.add(chat, slot(SENT, True), 7)
    totals.add(chat, slot(RECEIVED, False), 100)
    totals.add(totals.counts("/audio"), slot(RECEIVED, True), 3)

    assert collected.points("wstrace.message.count") == {
        _key("/chat", SENT, "text"): 2,
        _key("/chat", RECEIVED, "binary"): 1,
        _key("/audio", RECEIVED, "text"): 1,
    }  # zero totals are not reported
    assert collected.points("wstrace.message.size") == {
        _key("/chat", SENT, "text"): 12,
        _key("/chat", RECEIVED, "binary"): 100,
        _key("/audio", RECEIVED, "text"): 3,
    }


def test_a_route_of_none_has_no_route_attribute(collected: Collected) -> None:
    totals = collected.totals
    totals.add(totals.counts(None), slot(SENT, False), 4)
    assert collected.points("wstrace.message.count") == {_key(None, SENT, "binary"): 1}


def test_counts_are_shared_by_every_connection_on_a_route(collected: Collected) -> None:
    totals = collected.totals
    first, second = totals.counts("/chat"), totals.counts("/chat")
    assert first is second
    assert totals.counts("/other") is not first
    totals.add(first, slot(RECEIVED, True), 1)
    totals.add(second, slot(RECEIVED, True), 1)
    assert collected.points("wstrace.message.count") == {_key("/chat", RECEIVED, "text"): 2}


def test_messages_without_a_size_and_batches(collected: Collected) -> None:
    totals = collected.totals
    counts = totals.counts("/r")
    totals.add(counts, slot(SENT, False), None)  # not a payload: counted, no bytes
    totals.add(counts, slot(SENT, False), 0)  # an empty message
    totals.add(counts, slot(SENT, True), 2_000, messages=1_000)  # a batch of a thousand
    assert collected.points("wstrace.message.count") == {_key("/r", SENT, "binary"): 2, _key("/r", SENT, "text"): 1000}
    assert collected.points("wstrace.message.size") == {_key("/r", SENT, "text"): 2000}


def test_every_collection_sees_every_message_so_far(collected: Collected) -> None:
    totals = collected.totals
    counts = totals.counts("/chat")
    totals.add(counts, slot(SENT, True), 10)
    assert collected.points("wstrace.message.count") == {_key("/chat", SENT, "text"): 1}
    assert collected.points("wstrace.message.count") == {_key("/chat", SENT, "text"): 1}  # nothing is lost or re-added
    totals.add(counts, slot(SENT, True), 10)
    assert collected.points("wstrace.message.count") == {_key("/chat", SENT, "text"): 2}
    assert collected.points("wstrace.message.size") == {_key("/chat", SENT, "text"): 20}


def test_concurrent_adds_from_threads_add_up_exactly(collected: Collected) -> None:
    totals = collected.totals
    threads, per_thread = 8, 20_000
    start = threading.Barrier(threads)

    def work(n: int) -> None:
        start.wait()
        counts = totals.counts("/busy")  # made concurrently: every thread must get the same list
        index = slot(SENT if n % 2 else RECEIVED, True)
        for _ in range(per_thread):
            totals.add(counts, index, 3)

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    # Collections racing with the adds must neither fail nor disturb them.
    while any(worker.is_alive() for worker in workers):
        collected.points("wstrace.message.count")
    for worker in workers:
        worker.join()
    half = threads // 2 * per_thread
    assert collected.points("wstrace.message.count") == {
        _key("/busy", SENT, "text"): half,
        _key("/busy", RECEIVED, "text"): half,
    }
    assert collected.points("wstrace.message.size") == {
        _key("/busy", SENT, "text"): 3 * half,
        _key("/busy", RECEIVED, "text"): 3 * half,
    }


class _Open:
    """A Counted of its own: what an outbound stream reports while it counts its chunks."""

    def __init__(self, counts: list[int], index: int) -> None:
        self.counts, self.index = counts, index
        self.messages = self.size = self.others = self.other_size = 0

    def partial(self) -> tuple[list[int], int, int, int, int, int]:
        return self.counts, self.index, self.messages, self.size, self.others, self.other_size


def test_open_counts_are_observed_and_folded_exactly_once(collected: Collected) -> None:
    totals = collected.totals
    counts = totals.counts("/chat")
    totals.add(counts, slot(SENT, True), 4)
    stream = _Open(counts, slot(SENT, True))
    totals.open[stream] = None
    stream.messages, stream.size, stream.others, stream.other_size = 3, 30, 1, 2
    expected = {_key("/chat", SENT, "text"): 4, _key("/chat", SENT, "binary"): 1}
    assert collected.points("wstrace.message.count") == expected
    assert collected.points("wstrace.message.size") == {
        _key("/chat", SENT, "text"): 34,
        _key("/chat", SENT, "binary"): 2,
    }
    totals.fold(stream)
    totals.fold(stream)  # once only
    assert collected.points("wstrace.message.count") == expected
    assert counts[slot(SENT, True)] == 4 and counts[slot(SENT, False)] == 1 and not totals.open
