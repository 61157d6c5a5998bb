"""Context across in-process hops: which standard-library hops keep it, and the helpers for those that don't."""

from __future__ import annotations

import asyncio
import contextvars
import multiprocessing
import pickle
import queue
import random
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import pytest
from opentelemetry import baggage, context as otel_context, trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
from opentelemetry.trace import SpanKind, StatusCode
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from tests.conftest import Telemetry
from tests.instrumentation.contract import parent_id, span_id, trace_id
from wstrace.exceptions import ConfigError
from wstrace.instrumentation.websockets import WebsocketsInstrumentor
from wstrace.queues import (
    Carried,
    TracedAsyncQueue,
    TracedQueue,
    TracedThreadPoolExecutor,
    carry,
    restore,
    submit,
)


Ids = tuple[int, int]


def current_ids() -> Ids:
    """The (trace id, span id) current where this runs; (0, 0) with no span."""
    ctx = trace.get_current_span().get_span_context()
    return ctx.trace_id, ctx.span_id


def ids(span: ReadableSpan) -> Ids:
    return trace_id(span), span_id(span)


def link_ids(span: ReadableSpan) -> list[Ids]:
    return [(link.context.trace_id, link.context.span_id) for link in span.links]


def by_id(telemetry: Telemetry) -> dict[int, ReadableSpan]:
    return {span_id(s): s for s in telemetry.spans}


def ancestors(span: ReadableSpan, spans: dict[int, ReadableSpan]) -> list[ReadableSpan]:
    """The span's parent, its parent, and so on, as far as recorded spans go."""
    chain = []
    while span.parent is not None and span.parent.span_id in spans:
        span = spans[span.parent.span_id]
        chain.append(span)
    return chain


# Which hops lose the context (the claims of docs/howto/async-and-queues.md) ----------------


async def _create_task() -> Ids:
    async def probe() -> Ids:
        return current_ids()

    return await asyncio.create_task(probe())


async def _call_soon() -> Ids:
    future: asyncio.Future[Ids] = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_soon(lambda: future.set_result(current_ids()))
    return await future


async def _to_thread() -> Ids:
    return await asyncio.to_thread(current_ids)


async def _run_in_executor() -> Ids:
    with ThreadPoolExecutor(1) as pool:
        return await asyncio.get_running_loop().run_in_executor(pool, current_ids)


async def _pool_submit() -> Ids:
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(current_ids).result(5)


async def _thread() -> Ids:
    seen: list[Ids] = []
    thread = threading.Thread(target=lambda: seen.append(current_ids()))
    thread.start()
    thread.join(5)
    return seen[0]


async def _asyncio_queue(q: asyncio.Queue[Any] | None = None) -> Ids:
    """A worker task started before the message, fed through a queue."""
    q = q if q is not None else asyncio.Queue()
    answers: asyncio.Queue[Ids] = asyncio.Queue()

    async def worker() -> None:
        await q.get()
        await answers.put(current_ids())
        q.task_done()

    with _detached():
        task = asyncio.create_task(worker())
    await q.put("item")
    result = await answers.get()
    await task
    return result


async def _thread_queue(q: queue.Queue[Any] | None = None) -> Ids:
    """A worker thread started before the message, fed through a queue."""
    q = q if q is not None else queue.Queue()
    seen: list[Ids] = []

    def worker() -> None:
        q.get()
        seen.append(current_ids())
        q.task_done()

    thread = threading.Thread(target=worker)
    thread.start()
    q.put("item")
    thread.join(5)
    return seen[0]


@contextmanager
def _detached() -> Iterator[None]:
    """Run a block in an empty context (a worker created at start-up, before any span)."""
    token = otel_context.attach(Context())
    try:
        yield
    finally:
        otel_context.detach(token)


# Python 3.14 can make threads inherit the context (on by default in free-threaded builds).
_THREADS_INHERIT = bool(getattr(sys.flags, "thread_inherit_context", 0))

STDLIB_HOPS: dict[str, tuple[Callable[[], Awaitable[Ids]], bool]] = {
    "asyncio.create_task": (_create_task, True),
    "loop.call_soon": (_call_soon, True),
    "asyncio.to_thread": (_to_thread, True),
    "loop.run_in_executor": (_run_in_executor, _THREADS_INHERIT),
    "ThreadPoolExecutor.submit": (_pool_submit, _THREADS_INHERIT),
    "threading.Thread": (_thread, _THREADS_INHERIT),
    "asyncio.Queue": (_asyncio_queue, False),
    "queue.Queue": (_thread_queue, False),
}


@pytest.mark.parametrize("hop", list(STDLIB_HOPS))
def test_which_stdlib_hops_keep_the_context(telemetry: Telemetry, hop: str) -> None:
    """Tasks, callbacks and to_thread copy the context; executors, threads and queues do not."""
    probe, keeps = STDLIB_HOPS[hop]
    tracer = telemetry.provider.get_tracer("test")

    async def scenario() -> tuple[Ids, Ids]:
        with tracer.start_as_current_span("producer") as span:
            return await probe(), ids(span)

    seen, producer = asyncio.run(scenario())
    if keeps:
        assert seen == producer, f"{hop} should carry the context"
    else:
        assert seen == (0, 0), f"{hop} should lose the context"


# The same hops with wstrace -------------------------------------------------------------


async def _traced_submit() -> Ids:
    with TracedThreadPoolExecutor(1) as pool:
        return pool.submit(current_ids).result(5)


async def _traced_map() -> Ids:
    with TracedThreadPoolExecutor(2) as pool:
        results = set(pool.map(lambda _: current_ids(), range(4)))
    assert len(results) == 1
    return results.pop()


async def _traced_run_in_executor() -> Ids:
    with TracedThreadPoolExecutor(1) as pool:
        return await asyncio.get_running_loop().run_in_executor(pool, current_ids)


async def _default_executor() -> Ids:
    loop = asyncio.get_running_loop()
    loop.set_default_executor(TracedThreadPoolExecutor(1))  # asyncio.run shuts it down
    return await loop.run_in_executor(None, current_ids)


async def _submit_helper() -> Ids:
    with ThreadPoolExecutor(1) as pool:
        return await asyncio.wrap_future(submit(pool, current_ids))


async def _thread_recipe() -> Ids:
    seen: list[Ids] = []
    thread = threading.Thread(target=contextvars.copy_context().run, args=(lambda: seen.append(current_ids()),))
    thread.start()
    thread.join(5)
    return seen[0]


async def _traced_asyncio_queue(provider: Any) -> Ids:
    return await _asyncio_queue(TracedAsyncQueue(name="jobs", tracer_provider=provider))


async def _traced_thread_queue(provider: Any) -> Ids:
    return await _thread_queue(TracedQueue(name="jobs", tracer_provider=provider))


async def _carried_over_asyncio_queue(provider: Any) -> Ids:
    q: asyncio.Queue[Carried[str]] = asyncio.Queue()
    answers: asyncio.Queue[Ids] = asyncio.Queue()

    async def worker() -> None:
        with restore(await q.get(), "jobs", tracer_provider=provider):
            await answers.put(current_ids())

    with _detached():
        task = asyncio.create_task(worker())
    await q.put(carry("item"))
    await task
    return await answers.get()


WSTRACE_HOPS: dict[str, Callable[..., Awaitable[Ids]]] = {
    "TracedThreadPoolExecutor.submit": _traced_submit,
    "TracedThreadPoolExecutor.map": _traced_map,
    "run_in_executor(TracedThreadPoolExecutor)": _traced_run_in_executor,
    "set_default_executor(TracedThreadPoolExecutor)": _default_executor,
    "submit(ThreadPoolExecutor)": _submit_helper,
    "Thread(target=copy_context().run)": _thread_recipe,
    "TracedAsyncQueue": _traced_asyncio_queue,
    "TracedQueue": _traced_thread_queue,
    "carry/restore over asyncio.Queue": _carried_over_asyncio_queue,
}


@pytest.mark.parametrize("hop", list(WSTRACE_HOPS))
def test_wstrace_hops_keep_the_context(telemetry: Telemetry, hop: str) -> None:
    """Each broken hop, fixed: the far side runs in the producer's span, or in a process span under it."""
    tracer = telemetry.provider.get_tracer("test")
    probe = WSTRACE_HOPS[hop]
    queued = "Queue" in hop

    async def scenario() -> tuple[Ids, Ids]:
        with tracer.start_as_current_span("producer") as span:
            return await (probe(telemetry.provider) if queued else probe()), ids(span)

    seen, producer = asyncio.run(scenario())
    assert seen[0] == producer[0], "same trace"
    if queued:
        process = by_id(telemetry)[seen[1]]
        assert process.name == "process jobs"
        assert parent_id(process) == producer[1]
    else:
        assert seen == producer
    assert telemetry.open_spans.names() == []


# carry / restore ----------------------------------------------------------------------


def test_restore_parent_mode(telemetry: Telemetry) -> None:
    """By default the process span is the producer's child, links to it, and takes its baggage."""
    tracer = telemetry.provider.get_tracer("test")
    with tracer.start_as_current_span("producer") as producer:
        token = otel_context.attach(baggage.set_baggage("tenant", "acme"))
        carried = carry({"n": 1}, destination="jobs")
        otel_context.detach(token)
    assert carried.item == {"n": 1}
    before = current_ids()
    with restore(carried, tracer_provider=telemetry.provider) as item:
        assert item == {"n": 1}
        assert baggage.get_baggage("tenant") == "acme"
        with tracer.start_as_current_span("handle"):
            pass
    assert current_ids() == before, "the consumer's context is back"
    process = telemetry.one("process jobs")
    assert process.kind is SpanKind.CONSUMER
    assert parent_id(process) == span_id(producer)
    assert trace_id(process) == trace_id(producer)
    assert link_ids(process) == [ids(producer)]
    assert process.links[0].attributes == {"wstrace.link.kind": "creation"}
    assert process.attributes == {
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": "jobs",
    }
    assert parent_id(telemetry.one("handle")) == span_id(process)


def test_restore_link_mode(telemetry: Telemetry) -> None:
    """carry_link="link": a new trace, linked to the producer; the consumer's own baggage stays."""
    tracer = telemetry.provider.get_tracer("test")
    with tracer.start_as_current_span("producer") as producer:
        token = otel_context.attach(baggage.set_baggage("tenant", "acme"))
        carried = carry("x")
        otel_context.detach(token)
    token = otel_context.attach(baggage.set_baggage("worker", "w1"))
    try:
        with restore(carried, "jobs", carry_link="link", tracer_provider=telemetry.provider):
            assert baggage.get_baggage("tenant") is None
            assert baggage.get_baggage("worker") == "w1"
    finally:
        otel_context.detach(token)
    process = telemetry.one("process jobs")
    assert process.parent is None
    assert trace_id(process) != trace_id(producer)
    assert link_ids(process) == [ids(producer)]


def test_carry_link_from_the_environment(telemetry: Telemetry, monkeypatch: pytest.MonkeyPatch) -> None:
    """WSTRACE_CARRY_LINK sets the default; a keyword wins over it."""
    tracer = telemetry.provider.get_tracer("test")
    with tracer.start_as_current_span("producer"):
        carried = carry("x", destination="jobs")
    monkeypatch.setenv("WSTRACE_CARRY_LINK", " Link ")
    with restore(carried, tracer_provider=telemetry.provider):
        pass
    with restore(carried, carry_link="parent", tracer_provider=telemetry.provider):
        pass
    first, second = telemetry.named("process jobs")
    assert first.parent is None
    assert second.parent is not None


def test_bad_carry_link_values(telemetry: Telemetry, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad keyword raises ConfigError naming the option; a bad variable is ignored, so the
    default (parent) applies. Its warning, on wstrace.config, is checked in a fresh process by
    tests/test_config.py::test_bad_environment_value_is_logged_once_and_ignored."""
    with pytest.raises(ConfigError, match=r"^carry_link: expected one of parent, link, got 'child'$"):
        TracedQueue(carry_link="child")
    monkeypatch.setenv("WSTRACE_CARRY_LINK", "sideways")
    tracer = telemetry.provider.get_tracer("test")
    with tracer.start_as_current_span("producer") as producer:
        carried = carry("x")
    with restore(carried, tracer_provider=telemetry.provider):
        pass
    assert parent_id(telemetry.one("process")) == span_id(producer)


@pytest.mark.parametrize("text", ["LINK", " link ", "Link"])
def test_carry_link_keyword_is_case_and_blank_tolerant(telemetry: Telemetry, text: str) -> None:
    """carry_link takes any case and blanks as a keyword, as every choice option does."""
    tracer = telemetry.provider.get_tracer("test")
    with tracer.start_as_current_span("producer"):
        carried = carry("x", destination="jobs")
    with restore(carried, carry_link=text, tracer_provider=telemetry.provider):  # type: ignore[arg-type]
        pass
    jobs: TracedQueue[str] = TracedQueue(name="q", carry_link=text, tracer_provider=telemetry.provider)  # type: ignore[arg-type]
    with tracer.start_as_current_span("producer"):
        jobs.put("y")
    jobs.get()
    jobs.task_done()
    assert telemetry.one("process jobs").parent is None
    assert telemetry.one("process q").parent is None


def test_restore_records_an_escaping_error(telemetry: Telemetry) -> None:
    """An exception in the body marks the process span as an error and still propagates."""
    before = current_ids()
    with pytest.raises(KeyError), restore(carry("x"), "jobs", tracer_provider=telemetry.provider):
        raise KeyError("missing")
    assert current_ids() == before
    process = telemetry.one("process jobs")
    assert process.status.status_code is StatusCode.ERROR
    assert process.attributes["error.type"] == "KeyError"
    assert [e.name for e in process.events] == ["exception"]


def test_restore_without_context(telemetry: Telemetry) -> None:
    """An item carried outside any span, or never carried at all, is processed in a root span."""
    with restore(carry("x"), "jobs", tracer_provider=telemetry.provider) as item:
        assert item == "x"
    with restore("bare", "jobs", tracer_provider=telemetry.provider) as item:
        assert item == "bare"
    spans = telemetry.named("process jobs")
    assert len(spans) == 2
    assert all(s.parent is None and not s.links for s in spans)


def test_sampling_follows_the_producer() -> None:
    """In parent mode an unsampled producer makes an unsampled process span (ParentBased sampler)."""
    sampled = Telemetry(sampler=ParentBased(ALWAYS_ON))
    remote = trace.NonRecordingSpan(trace.SpanContext(0x1234, 0x5678, is_remote=True, trace_flags=trace.TraceFlags(0)))
    carried = Carried("x", trace.set_span_in_context(remote))
    with restore(carried, "jobs", tracer_provider=sampled.provider):
        assert not trace.get_current_span().is_recording()
    with restore(carried, "jobs", carry_link="link", tracer_provider=sampled.provider):
        assert trace.get_current_span().is_recording()
    assert len(sampled.named("process jobs")) == 1


def test_carried_pickles_as_a_carrier(telemetry: Telemetry) -> None:
    """Across a process boundary a Carried item travels with a carrier and comes back as a remote context."""
    tracer = telemetry.provider.get_tracer("test")
    with tracer.start_as_current_span("producer") as producer:
        carried = carry([1, 2], destination="jobs")
    copy = pickle.loads(pickle.dumps(carried))
    assert copy.item == [1, 2]
    assert copy.destination == "jobs"
    remote = trace.get_current_span(copy.context).get_span_context()
    assert (remote.trace_id, remote.span_id) == ids(producer)
    assert remote.is_remote


def _remote_ids(offset: int) -> tuple[int, int, int]:
    return (*current_ids(), offset)


def test_submit_to_a_process_pool(telemetry: Telemetry) -> None:
    """submit() hands the trace context to a ProcessPoolExecutor worker."""
    tracer = telemetry.provider.get_tracer("test")
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        with tracer.start_as_current_span("producer") as producer:
            future = submit(pool, _remote_ids, 7)
        plain = pool.submit(_remote_ids, 8)
        assert future.result(30) == (*ids(producer), 7)
        assert plain.result(30) == (0, 0, 8)


# Drop-in queues ---------------------------------------------------------------------------


def test_traced_queue_is_a_drop_in(telemetry: Telemetry) -> None:
    """FIFO order, maxsize, Empty/Full, join and task_done behave as in queue.Queue."""
    q: TracedQueue[int] = TracedQueue(2, tracer_provider=telemetry.provider)
    q.put(1)
    q.put_nowait(2)
    with pytest.raises(queue.Full):
        q.put_nowait(3)
    assert q.qsize() == 2
    assert [q.get(), q.get_nowait()] == [1, 2]
    with pytest.raises(queue.Empty):
        q.get(timeout=0.01)
    q.task_done()
    q.task_done()
    q.join()
    with pytest.raises(ValueError):
        q.task_done()
    assert [s.name for s in telemetry.spans] == ["process", "process"]
    assert telemetry.open_spans.names() == []


def test_traced_async_queue_is_a_drop_in(telemetry: Telemetry) -> None:
    """FIFO order, maxsize, QueueEmpty/QueueFull, join and task_done behave as in asyncio.Queue."""

    async def scenario() -> list[int]:
        q: TracedAsyncQueue[int] = TracedAsyncQueue(2, name="jobs", tracer_provider=telemetry.provider)
        await q.put(1)
        q.put_nowait(2)
        with pytest.raises(asyncio.QueueFull):
            q.put_nowait(3)
        got = [await q.get(), q.get_nowait()]
        with pytest.raises(asyncio.QueueEmpty):
            q.get_nowait()
        q.task_done()
        q.task_done()
        await asyncio.wait_for(q.join(), 1)
        return got

    assert asyncio.run(scenario()) == [1, 2]
    assert len(telemetry.named("process jobs")) == 2
    assert telemetry.open_spans.names() == []


def test_queue_span_lasts_until_task_done_or_next_get(telemetry: Telemetry) -> None:
    """The process span is current from get() to task_done(), or to the consumer's next get()."""
    tracer = telemetry.provider.get_tracer("test")
    q: TracedQueue[str] = TracedQueue(name="jobs", tracer_provider=telemetry.provider)
    with tracer.start_as_current_span("producer") as producer:
        q.put("a")
        q.put("b")
    assert q.get() == "a"
    first = trace.get_current_span()
    assert first.is_recording() and parent_id(first) == span_id(producer)
    assert q.get() == "b"  # no task_done(): the next get() ends the first span
    assert not first.is_recording()
    second = trace.get_current_span()
    assert second is not first and second.is_recording()
    q.task_done()
    assert not second.is_recording()
    assert current_ids() == (0, 0), "the consumer's own context is back"


def test_a_consumer_that_vanishes_leaves_no_open_span(telemetry: Telemetry) -> None:
    """A thread that exits without task_done() has its span ended by the next consumer call."""
    q: TracedQueue[str] = TracedQueue(name="jobs", tracer_provider=telemetry.provider)
    q.put("a")
    q.put("b")
    thread = threading.Thread(target=q.get)
    thread.start()
    thread.join(5)
    assert telemetry.open_spans.names() == ["process jobs"]
    assert q.get() == "b"
    q.task_done()
    assert telemetry.open_spans.names() == []
    assert len(telemetry.named("process jobs")) == 2


def test_get_in_wait_for_leaves_no_open_span(telemetry: Telemetry) -> None:
    """asyncio.wait_for(q.get()) (a task of its own before 3.12) still ends its span at task_done()."""

    async def scenario() -> None:
        q: TracedAsyncQueue[str] = TracedAsyncQueue(name="jobs", tracer_provider=telemetry.provider)
        for item in "abc":
            q.put_nowait(item)
            assert await asyncio.wait_for(q.get(), 1) == item
            q.task_done()
        assert telemetry.open_spans.names() == []

    asyncio.run(scenario())
    assert len(telemetry.named("process jobs")) == 3


def test_nested_queues_keep_both_spans(telemetry: Telemetry) -> None:
    """Getting from a second queue while handling an item of the first ends neither span early."""
    outer: TracedQueue[str] = TracedQueue(name="outer", tracer_provider=telemetry.provider)
    inner: TracedQueue[str] = TracedQueue(name="inner", tracer_provider=telemetry.provider)
    outer.put("a")
    assert outer.get() == "a"
    inner.put("b")  # put while outer's span is current: inner's item is its child
    assert inner.get() == "b"
    inner.task_done()
    outer.task_done()
    spans = {s.name: s for s in telemetry.spans}
    assert parent_id(spans["process inner"]) == span_id(spans["process outer"])
    assert spans["process outer"].end_time >= spans["process inner"].end_time


@pytest.mark.parametrize("mode", ["parent", "link"])
def test_nested_queue_item_stays_in_its_own_trace(telemetry: Telemetry, mode: str) -> None:
    """An item of a second queue, taken while an item of the first is handled, is processed in
    its own message's trace (parent: its creation context, or none with carry_link="link"); the
    outer process span, current where it was taken, is a link (wstrace.link.kind=ambient)."""
    tracer = telemetry.provider.get_tracer("test")
    outer: TracedQueue[str] = TracedQueue(name="outer", carry_link=mode, tracer_provider=telemetry.provider)  # type: ignore[arg-type]
    inner: TracedQueue[str] = TracedQueue(name="inner", carry_link=mode, tracer_provider=telemetry.provider)  # type: ignore[arg-type]
    with tracer.start_as_current_span("outer producer") as outer_producer:
        outer.put("a")
    with tracer.start_as_current_span("inner producer") as inner_producer:
        inner.put("b")
    assert outer.get() == "a"
    outer_process = trace.get_current_span()
    assert inner.get() == "b"
    with tracer.start_as_current_span("handle b"):
        pass
    inner.task_done()
    assert trace.get_current_span() is outer_process, "the outer span is current again"
    outer.task_done()
    process_inner, process_outer = telemetry.one("process inner"), telemetry.one("process outer")
    if mode == "parent":
        assert parent_id(process_inner) == span_id(inner_producer)
        assert trace_id(process_inner) == trace_id(inner_producer)
    else:
        assert process_inner.parent is None
    assert [
        (link, dict(link_.attributes or {}))
        for link, link_ in zip(link_ids(process_inner), process_inner.links, strict=True)
    ] == [
        (ids(inner_producer), {"wstrace.link.kind": "creation"}),
        (ids(process_outer), {"wstrace.link.kind": "ambient"}),
    ]
    assert link_ids(process_outer) == [ids(outer_producer)], "nothing was current: no ambient link"
    assert parent_id(telemetry.one("handle b")) == span_id(process_inner)


# 1,000 items, several workers ---------------------------------------------------------------


def _check_not_cross_wired(telemetry: Telemetry, count: int, destination: str) -> None:
    spans = by_id(telemetry)
    producers = {s.attributes["item"]: s for s in telemetry.named("produce")}
    processes = telemetry.named(f"process {destination}")
    assert len(producers) == len(processes) == count
    handled = telemetry.named("handle")
    assert len(handled) == count
    for handle in handled:
        process = spans[parent_id(handle)]
        assert process.name == f"process {destination}"
        producer = producers[handle.attributes["item"]]
        assert parent_id(process) == span_id(producer), "process span under the wrong producer"
        assert link_ids(process) == [ids(producer)]
    assert telemetry.open_spans.names() == []


def test_thousand_items_through_async_queue(telemetry: Telemetry) -> None:
    """1,000 items, 8 worker tasks: every process span is under its own producer span."""
    tracer = telemetry.provider.get_tracer("test")
    count = 1000

    async def scenario() -> None:
        q: TracedAsyncQueue[int] = TracedAsyncQueue(10, name="jobs", tracer_provider=telemetry.provider)

        async def worker() -> None:
            while True:
                item = await q.get()
                await asyncio.sleep(random.random() / 1000)  # interleave the workers
                with tracer.start_as_current_span("handle", attributes={"item": item}):
                    await asyncio.sleep(0)
                q.task_done()

        with _detached():
            workers = [asyncio.create_task(worker()) for _ in range(8)]

        async def producer(start: int) -> None:
            for item in range(start, count, 4):
                with tracer.start_as_current_span("produce", attributes={"item": item}):
                    await q.put(item)

        await asyncio.gather(*(producer(i) for i in range(4)))
        await asyncio.wait_for(q.join(), 20)
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)

    asyncio.run(scenario())
    _check_not_cross_wired(telemetry, count, "jobs")


def test_thousand_items_through_thread_queue(telemetry: Telemetry) -> None:
    """1,000 items, 4 worker threads, 2 producer threads: no process span crosses wires."""
    tracer = telemetry.provider.get_tracer("test")
    count = 1000
    q: TracedQueue[int] = TracedQueue(16, name="jobs", tracer_provider=telemetry.provider)
    stop = threading.Event()

    def worker() -> None:
        while not stop.is_set():
            try:
                item = q.get(timeout=0.02)
            except queue.Empty:
                continue
            if item % 7 == 0:
                time.sleep(0.0005)  # interleave
            with tracer.start_as_current_span("handle", attributes={"item": item}):
                pass
            q.task_done()

    def producer(start: int) -> None:
        for item in range(start, count, 2):
            with tracer.start_as_current_span("produce", attributes={"item": item}):
                q.put(item)

    workers = [threading.Thread(target=worker) for _ in range(4)]
    producers = [threading.Thread(target=producer, args=(i,)) for i in range(2)]
    for thread in workers + producers:
        thread.start()
    for thread in producers:
        thread.join(20)
    joiner = threading.Thread(target=q.join, daemon=True)  # q.join() has no timeout of its own
    joiner.start()
    joiner.join(20)
    assert not joiner.is_alive(), "the workers did not finish"
    stop.set()
    for thread in workers:
        thread.join(20)
    assert not any(t.is_alive() for t in workers + producers)
    _check_not_cross_wired(telemetry, count, "jobs")


# A WebSocket gateway handing work to a local worker ---------------------------------------------


@pytest.fixture
def instrument(telemetry: Telemetry) -> Iterator[Callable[..., None]]:
    instrumentor = WebsocketsInstrumentor()

    def do(**options: Any) -> None:
        options.setdefault("tracer_provider", telemetry.provider)
        instrumentor.instrument(**options)

    yield do
    instrumentor.uninstrument()


@asynccontextmanager
async def gateway(handler: Callable[[ServerConnection], Awaitable[None]]) -> AsyncIterator[str]:
    async with serve(handler, "127.0.0.1", 0) as srv:
        yield f"ws://127.0.0.1:{srv.sockets[0].getsockname()[1]}/chat"


Hop = Callable[[Telemetry], Any]


def _asyncio_queue_gateway(telemetry: Telemetry) -> Any:
    """The handler queues (ws, message); a worker task started before any connection answers."""
    tracer = telemetry.provider.get_tracer("test")

    @asynccontextmanager
    async def setup() -> AsyncIterator[Callable[[ServerConnection], Awaitable[None]]]:
        q: TracedAsyncQueue[tuple[ServerConnection, str]] = TracedAsyncQueue(
            name="work", tracer_provider=telemetry.provider
        )

        async def worker() -> None:
            while True:
                ws, message = await q.get()
                with tracer.start_as_current_span("work", attributes={"text": message}):
                    result = message.upper()
                await ws.send(result)
                q.task_done()

        async def handler(ws: ServerConnection) -> None:
            async for message in ws:
                await q.put((ws, str(message)))

        with _detached():
            task = asyncio.create_task(worker())
        yield handler
        task.cancel()

    return setup


def _thread_queue_gateway(telemetry: Telemetry) -> Any:
    """The handler queues (ws, message); a worker thread answers through run_coroutine_threadsafe."""
    tracer = telemetry.provider.get_tracer("test")

    @asynccontextmanager
    async def setup() -> AsyncIterator[Callable[[ServerConnection], Awaitable[None]]]:
        loop = asyncio.get_running_loop()
        q: TracedQueue[tuple[ServerConnection, str] | None] = TracedQueue(
            name="work", tracer_provider=telemetry.provider
        )

        def worker() -> None:
            while (item := q.get()) is not None:
                ws, message = item
                with tracer.start_as_current_span("work", attributes={"text": message}):
                    result = message.upper()
                asyncio.run_coroutine_threadsafe(ws.send(result), loop).result(5)
                q.task_done()
            q.task_done()

        async def handler(ws: ServerConnection) -> None:
            async for message in ws:
                q.put((ws, str(message)))

        thread = threading.Thread(target=worker)
        thread.start()
        yield handler
        q.put(None)
        await asyncio.to_thread(thread.join, 5)

    return setup


def _pool_gateway(kind: str) -> Callable[[Telemetry], Any]:
    """The handler runs the work in a thread (pool) and sends the result itself."""

    def make(telemetry: Telemetry) -> Any:
        tracer = telemetry.provider.get_tracer("test")

        def work(message: str) -> str:
            with tracer.start_as_current_span("work", attributes={"text": message}):
                return message.upper()

        @asynccontextmanager
        async def setup() -> AsyncIterator[Callable[[ServerConnection], Awaitable[None]]]:
            loop = asyncio.get_running_loop()
            traced = TracedThreadPoolExecutor(2)
            plain = ThreadPoolExecutor(2)
            if kind == "default executor":
                loop.set_default_executor(TracedThreadPoolExecutor(2))

            async def handler(ws: ServerConnection) -> None:
                async for message in ws:
                    if kind == "run_in_executor":
                        result = await loop.run_in_executor(traced, work, str(message))
                    elif kind == "default executor":
                        result = await loop.run_in_executor(None, work, str(message))
                    elif kind == "submit":
                        result = await asyncio.wrap_future(submit(plain, work, str(message)))
                    elif kind == "to_thread":
                        result = await asyncio.to_thread(work, str(message))
                    else:  # a task created by the handler, which copies the context
                        result = await asyncio.create_task(asyncio.to_thread(work, str(message)))
                    await ws.send(result)

            yield handler
            traced.shutdown()
            plain.shutdown()

        return setup

    return make


GATEWAYS: dict[str, Hop] = {
    "asyncio.Queue worker": _asyncio_queue_gateway,
    "queue.Queue worker thread": _thread_queue_gateway,
    "thread pool (run_in_executor)": _pool_gateway("run_in_executor"),
    "thread pool (default executor)": _pool_gateway("default executor"),
    "thread pool (submit)": _pool_gateway("submit"),
    "asyncio.to_thread": _pool_gateway("to_thread"),
    "task from the handler": _pool_gateway("task"),
}


@pytest.mark.parametrize("model", ["message", "connection"])
@pytest.mark.parametrize("hop", list(GATEWAYS))
def test_gateway_hands_work_to_a_local_worker(
    telemetry: Telemetry, instrument: Callable[..., None], hop: str, model: str
) -> None:
    """Client send, gateway receive, the worker's spans and the reply the client gets share one trace."""
    instrument(model=model)
    tracer = telemetry.provider.get_tracer("test")
    setup = GATEWAYS[hop](telemetry)

    async def scenario() -> list[Any]:
        async with setup() as handler, gateway(handler) as url:
            with tracer.start_as_current_span("session"):
                async with connect(url) as ws:
                    replies = []
                    for text in ("one", "two"):
                        with tracer.start_as_current_span("ask", attributes={"text": text}):
                            await ws.send(text)
                            replies.append(await asyncio.wait_for(ws.recv(), 5))
                    return replies

    assert asyncio.run(scenario()) == ["ONE", "TWO"]
    spans = by_id(telemetry)
    session = telemetry.one("session")
    for text in ("one", "two"):
        ask = telemetry.one("ask", text=text)
        work = telemetry.one("work", text=text)
        chain = ancestors(work, spans)
        receive = next(s for s in chain if s.name == "receive /chat")
        assert receive.kind is SpanKind.CONSUMER
        if model == "message":
            assert ask in chain, "the worker's span descends from the client's span"
        else:
            assert session in chain, "one trace per connection, the worker's span included"
        if "Queue" in hop:
            process = chain[0]
            assert process.name == "process work"
            assert chain[1] is receive, "the process span is the gateway receive span's child"
            assert link_ids(process) == [ids(receive)]
        else:
            assert chain[0] is receive, "the work runs directly in the receive span"
        # The reply crosses back in the same trace: a gateway send after the work, and the client's
        # receive of it (its child, or linked to it in the connection model).
        after = [s for s in telemetry.spans if trace_id(s) == trace_id(work) and s.start_time >= work.end_time]
        sends = {span_id(s) for s in after if s.kind is SpanKind.PRODUCER}
        received = [
            s for s in after if s.kind is SpanKind.CONSUMER and ({parent_id(s)} | {i for _, i in link_ids(s)}) & sends
        ]
        assert received, f"no reply in the trace of {text!r}: {[s.name for s in after]}"
    assert telemetry.open_spans.names() == []
