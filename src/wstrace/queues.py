"""Trace context across in-process hops: queues, thread pools, threads and processes.

``contextvars`` already follow a value into an ``asyncio`` task (copied at
creation), into ``asyncio.to_thread`` and into loop callbacks. They do not
follow it into a queue, a ``ThreadPoolExecutor.submit``, a
``loop.run_in_executor`` or a ``threading.Thread``. This module closes those
gaps (``docs/howto/async-and-queues.md`` lists every hop):

* :func:`carry` captures the current context with an item, :func:`restore`
  starts the ``process`` span from it where the item is handled;
* :class:`TracedQueue` and :class:`TracedAsyncQueue` do both inside
  ``put`` and ``get``: drop-in ``queue.Queue`` and ``asyncio.Queue``;
* :class:`TracedThreadPoolExecutor` and :func:`submit` run a function in the
  context of its caller, as ``asyncio.to_thread`` does.

Standard library and ``opentelemetry-api`` only. Like the rest of the core,
nothing here raises into the host application because of tracing: a failure
is logged once and the item still gets through.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import queue
import sys
import threading
from concurrent.futures import Executor, Future
from concurrent.futures.thread import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterator, Mapping, Optional, ParamSpec, TypeVar, cast

from opentelemetry import context as otel_context, trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanKind
from opentelemetry.util.types import AttributeValue

from wstrace import _context, propagation, semconv as sc
from wstrace._log import warn_once
from wstrace._spans import record_error
from wstrace.config import CARRY_LINK_ENV, CarryLink, carry_link as _carry_link
from wstrace.version import __version__


__all__ = [
    "CARRY_LINK_ENV",
    "CarryLink",
    "Carried",
    "TracedAsyncQueue",
    "TracedQueue",
    "TracedThreadPoolExecutor",
    "carry",
    "restore",
    "submit",
]

_log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")
P = ParamSpec("P")


@functools.lru_cache(maxsize=32)
def _tracer(provider: Optional[trace.TracerProvider]) -> trace.Tracer:
    return trace.get_tracer(
        "wstrace", __version__, tracer_provider=provider, schema_url="https://opentelemetry.io/schemas/1.26.0"
    )


def _messaging(
    system: Optional[str], operation_type: str, operation: str, destination: Optional[str]
) -> dict[str, AttributeValue]:
    """A messaging span's attributes, in the conventions' names: the system and the destination unless
    ``None``, the operation's type (``send``, ``process``) and its name."""
    attributes: dict[str, AttributeValue] = {}
    if system is not None:
        attributes[sc.MESSAGING_SYSTEM] = system
    attributes[sc.MESSAGING_OPERATION_TYPE] = operation_type
    attributes[sc.MESSAGING_OPERATION_NAME] = operation
    if destination is not None:
        attributes[sc.MESSAGING_DESTINATION_NAME] = destination
    return attributes


@dataclass(frozen=True, eq=False)
class Carried(Generic[T]):
    """An item and the context it was enqueued (or written to Redis) in."""

    item: T
    """The application's item, exactly as it was given."""

    context: Context = field(default_factory=Context)
    """The creation context: the producer's context in-process, the extracted one
    across processes; empty when the item came with none (a foreign Redis entry)."""

    destination: Optional[str] = None
    """Queue, list, stream or channel name: ``messaging.destination.name``."""

    attributes: Mapping[str, AttributeValue] = field(default_factory=dict)
    """Extra attributes for the ``process`` span (set by the Redis helpers)."""

    def __reduce__(self) -> tuple[Any, ...]:
        # A Context holds live spans and cannot be pickled: across a process
        # boundary (multiprocessing.Queue, ProcessPoolExecutor) it travels as
        # a propagation carrier and comes back as the remote context.
        carrier = propagation.inject(self.context)
        return (_revive, (self.item, carrier, self.destination, dict(self.attributes)))


def _revive(
    item: Any, carrier: dict[str, str], destination: Optional[str], attributes: dict[str, AttributeValue]
) -> Carried[Any]:
    return Carried(item, propagation.extract(carrier), destination, attributes)


def carry(item: T, *, destination: Optional[str] = None) -> Carried[T]:
    """Wrap ``item`` with the current context, at enqueue time."""
    return Carried(item, otel_context.get_current(), destination)


class _Processing:
    """A started ``process`` span, attached as the current context."""

    __slots__ = ("attachment", "ended", "span")

    def __init__(self, span: Span, attachment: _context.Attachment) -> None:
        self.span = span
        self.attachment = attachment
        self.ended = False

    def fail(self, exc: BaseException) -> None:
        try:
            if self.span.is_recording():
                record_error(self.span, exc)
        except Exception as err:  # pragma: no cover - defensive
            warn_once("recording a processing error", err, logger=_log)

    def finish(self, *, detach: bool = True) -> None:
        if self.ended:
            return
        self.ended = True
        try:
            # Detaches only if still current, in the Context that attached: resetting a stale
            # token would roll back what the application attached after us.
            if detach:
                self.attachment.detach()
            self.span.end()
        except Exception as exc:  # pragma: no cover - defensive
            warn_once("ending a process span", exc, logger=_log)


def _begin(
    tracer: trace.Tracer, carried: Carried[Any], destination: Optional[str], mode: CarryLink
) -> Optional[_Processing]:
    """Start the ``process`` span for one item and make it current.

    The parent is the item's creation context (``parent`` mode) or none (``link`` mode), never
    the span current where the item is taken: a process span belongs to its message's trace,
    as the messaging conventions say for one message. That ambient span, if any (a process
    span of another queue whose item is being handled), becomes a link instead.
    """
    try:
        creation = propagation.remote_span_context(carried.context)
        links = [Link(creation, {sc.LINK_KIND: "creation"})] if creation is not None else []
        ambient = trace.get_current_span().get_span_context()
        if ambient.is_valid and (creation is None or ambient.span_id != creation.span_id):
            links.append(Link(ambient, {sc.LINK_KIND: "ambient"}))
        if mode == "parent":
            # The creation context is the parent and the base: the producer's baggage comes
            # along, as with a WebSocket envelope under trust=parent.
            parent = base = carried.context
        else:
            parent, base = Context(), otel_context.get_current()
        name = destination or carried.destination
        attributes = _messaging(None, "process", "process", name or None)
        attributes.update(carried.attributes)
        span = tracer.start_span(
            f"process {name}" if name else "process",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            links=links,
        )
        return _Processing(span, _context.attach(trace.set_span_in_context(span, base)))
    except Exception as exc:
        warn_once("starting a process span", exc, logger=_log)
        return None


@contextmanager
def restore(
    carried: Carried[T],
    destination: Optional[str] = None,
    *,
    carry_link: Optional[CarryLink] = None,
    tracer_provider: Optional[trace.TracerProvider] = None,
) -> Iterator[T]:
    """Handle a carried item inside its ``process`` span; yields the item.

    The span is ``process {destination}`` (``destination`` defaults to the
    carried one), kind ``CONSUMER``, current for the body of the ``with``, and
    records an exception that escapes it. ``carry_link`` (default: env
    ``WSTRACE_CARRY_LINK``, else ``parent``) chooses between parenting on the
    creation context and only linking to it. Anything that is not a
    :class:`Carried` is yielded as it is, in a span with no parent.
    """
    if not isinstance(carried, Carried):
        carried = Carried(carried)
    processing = _begin(_tracer(tracer_provider), carried, destination, _carry_link(carry_link))
    try:
        yield carried.item
    except Exception as exc:
        if processing is not None:
            processing.fail(exc)
        raise
    finally:
        if processing is not None:
            processing.finish()


def _owner() -> object:
    """Who is consuming: the running asyncio task, else the thread."""
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no running loop in this thread
        task = None
    return task if task is not None else threading.current_thread()


def _gone(owner: object) -> bool:
    if isinstance(owner, asyncio.Future):
        return owner.done()
    if isinstance(owner, threading.Thread):
        return not owner.is_alive()
    return True  # pragma: no cover - owners are tasks or threads


class _Consumers:
    """The open ``process`` span of each consumer (thread or task) of one queue.

    A drop-in queue has no callback around the handling of an item, so its
    span lasts from ``get`` until that consumer calls ``task_done`` or ``get``
    again, as a WebSocket receive span lasts until the next ``recv``.
    """

    def __init__(self, tracer: trace.Tracer, name: Optional[str], mode: CarryLink) -> None:
        self.tracer = tracer
        self.name = name
        self.mode = mode
        self._open: dict[object, _Processing] = {}
        self._lock = threading.Lock()

    def begin(self, entry: Any) -> Any:
        carried = entry if isinstance(entry, Carried) else Carried(entry)
        processing = _begin(self.tracer, carried, self.name, self.mode)
        if processing is not None:
            with self._lock:
                self._open[_owner()] = processing
        return carried.item

    def finish(self) -> None:
        """End the caller's open span, and those of consumers that are gone."""
        try:
            owner = _owner()
            with self._lock:
                mine = self._open.pop(owner, None)
                # A consumer that ended without task_done(), or a get() run in
                # a task of its own (asyncio.wait_for before Python 3.12),
                # would otherwise leave its span open for ever.
                orphans = [self._open.pop(o) for o in list(self._open) if _gone(o)]
            if mine is not None:
                mine.finish()
            for processing in orphans:
                processing.finish(detach=False)
        except Exception as exc:  # pragma: no cover - defensive
            warn_once("ending a queue's process span", exc, logger=_log)


class _Carrying(Generic[T]):
    """What both traced queues add to theirs (the next class in the MRO): a name, the consumers' process
    spans, and each item put wrapped with the producer's context."""

    def __init__(
        self,
        maxsize: int = 0,
        *,
        name: Optional[str] = None,
        carry_link: Optional[CarryLink] = None,
        tracer_provider: Optional[trace.TracerProvider] = None,
    ) -> None:
        super().__init__(maxsize)  # type: ignore[call-arg]  # the queue's
        self.name = name
        self._consumers = _Consumers(_tracer(tracer_provider), name, _carry_link(carry_link))

    def _put(self, item: T) -> None:
        # Runs in the producer's thread or task, inside put(): its context is current.
        super()._put(cast(T, Carried(item, otel_context.get_current(), self.name)))  # type: ignore[misc]


class TracedQueue(_Carrying[T], queue.Queue[T]):
    """A ``queue.Queue`` whose items keep the context they were put in.

    ``put`` captures the producer's context; ``get`` starts the
    ``process {name}`` span and makes it current in the consumer's thread until
    it calls :meth:`task_done` or ``get`` again. ``q.queue`` holds
    :class:`Carried` wrappers, not the bare items.
    """

    def get(self, block: bool = True, timeout: Optional[float] = None) -> T:
        """Remove and return an item, as ``queue.Queue.get``, inside its process span."""
        self._consumers.finish()  # the previous item is handled: don't count the wait
        return cast(T, self._consumers.begin(super().get(block, timeout)))

    def task_done(self) -> None:
        """End the caller's process span, then ``queue.Queue.task_done``."""
        self._consumers.finish()
        super().task_done()


class TracedAsyncQueue(_Carrying[T], asyncio.Queue[T]):
    """An ``asyncio.Queue`` whose items keep the context they were put in.

    As :class:`TracedQueue`, per consumer task. ``get`` must run in the
    consumer's own task for the span to be current there: wrap it in
    ``asyncio.timeout()``, not ``asyncio.wait_for()`` (which runs it in a task
    of its own before Python 3.12).
    """

    async def get(self) -> T:
        """Remove and return an item, as ``asyncio.Queue.get``, inside its process span."""
        self._consumers.finish()
        return await super().get()  # which calls get_nowait()

    def get_nowait(self) -> T:
        """Remove and return an item if one is ready, inside its process span."""
        self._consumers.finish()
        return cast(T, self._consumers.begin(super().get_nowait()))

    def task_done(self) -> None:
        """End the calling task's process span, then ``asyncio.Queue.task_done``."""
        self._consumers.finish()
        super().task_done()


class TracedThreadPoolExecutor(ThreadPoolExecutor):
    """A ``ThreadPoolExecutor`` that runs each call in a copy of its submitter's context.

    Covers ``submit``, ``map`` and ``loop.run_in_executor(pool, ...)``; pass
    one to ``loop.set_default_executor`` to cover ``run_in_executor(None, ...)``.
    """

    def submit(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Future[R]:
        return super().submit(functools.partial(contextvars.copy_context().run, fn, *args, **kwargs))


class _Remote(Generic[R]):
    """A call that re-attaches its submitter's context in a worker process (picklable)."""

    def __init__(self, fn: Callable[..., R], carrier: dict[str, str]) -> None:
        self.fn = fn
        self.carrier = carrier

    def __call__(self, *args: Any, **kwargs: Any) -> R:
        token = otel_context.attach(propagation.extract(self.carrier))
        try:
            return self.fn(*args, **kwargs)
        finally:
            otel_context.detach(token)


def _is_process_pool(executor: Executor) -> bool:
    # Looked up, not imported: importing multiprocessing would double this module's import
    # time, and no executor can be a process pool if its module was never imported.
    process = sys.modules.get("concurrent.futures.process")
    return process is not None and isinstance(executor, process.ProcessPoolExecutor)


def submit(executor: Executor, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Future[R]:
    """``executor.submit(fn, ...)``, with ``fn`` running in the caller's context.

    A thread pool gets a copy of every context variable, as ``asyncio.to_thread``
    does. A ``ProcessPoolExecutor`` gets the trace context as a propagation
    carrier (``fn`` and its arguments must be picklable, as always there).
    """
    if _is_process_pool(executor):
        return executor.submit(_Remote(fn, propagation.inject()), *args, **kwargs)
    return executor.submit(functools.partial(contextvars.copy_context().run, fn, *args, **kwargs))
