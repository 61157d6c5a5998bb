"""Safe attach/detach (wstrace._context): never an ERROR log from OpenTelemetry, never a rolled-back context."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
from typing import Any

import pytest
from opentelemetry import context as otel_context, trace
from opentelemetry.context import Context
from opentelemetry.context.context import _RuntimeContext

from wstrace import _context
from wstrace._context import Attachment, attach, detach


KEY = otel_context.create_key("wstrace-test")


def _ctx(label: str) -> Context:
    return otel_context.set_value(KEY, label, Context())


def _current_label() -> Any:
    return otel_context.get_value(KEY)


def _otel_errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("opentelemetry.context") and r.levelno >= logging.ERROR]


def test_attach_makes_current_and_the_owner_detach_restores_the_previous_context() -> None:
    outer = otel_context.attach(_ctx("outer"))
    try:
        attachment = attach(_ctx("receive"))
        assert isinstance(attachment, Attachment)
        assert _current_label() == "receive"
        assert otel_context.get_current() is attachment.ctx
        assert attachment.detach() is True
        assert _current_label() == "outer"
        # Once detached, a second detach is a quiet no.
        assert attachment.detach() is False
        assert detach(attachment) is False
        assert _current_label() == "outer"
    finally:
        otel_context.detach(outer)


def test_detach_of_none_is_false() -> None:
    assert detach(None) is False


def test_module_detach_detaches() -> None:
    attachment = attach(_ctx("a"))
    assert detach(attachment) is True
    assert _current_label() is None


def test_a_stale_attachment_does_not_roll_back_the_applications_context(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    ours = attach(_ctx("receive"))
    app = otel_context.attach(_ctx("application"))  # the application attached something since
    assert ours.detach() is False
    assert _current_label() == "application"  # not rolled back to what was current before ours
    # Once the application lets go of its own, ours is current again and can go.
    otel_context.detach(app)
    assert _current_label() == "receive"
    assert ours.detach() is True
    assert _current_label() is None
    assert not _otel_errors(caplog)


def test_a_token_reset_by_someone_else_is_not_reset_again(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    ctx = _ctx("receive")
    ours = attach(ctx)
    otel_context.detach(ours.token)  # type: ignore[arg-type]  # used up behind our back
    again = otel_context.attach(ctx)  # the same context is current again, through another token
    try:
        assert ours.detach() is False
        assert _current_label() == "receive"
        assert not _otel_errors(caplog)
    finally:
        otel_context.detach(again)


def test_detach_from_a_task_created_while_attached_is_a_quiet_no(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    async def main() -> None:
        attachment = attach(_ctx("receive"))

        async def reply_task() -> tuple[bool, Any]:
            # This task inherited a copy of the context: the token belongs to another Context.
            return attachment.detach(), _current_label()

        task = asyncio.create_task(reply_task())
        detached, seen = await task
        assert detached is False
        assert seen == "receive"  # the task's own context is left as it was
        assert _current_label() == "receive"
        # The owner's detach still works afterwards.
        assert attachment.detach() is True
        assert _current_label() is None

    asyncio.run(main())
    assert not _otel_errors(caplog)


def test_detach_from_another_thread_is_a_quiet_no(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    attachment = attach(_ctx("receive"))
    results: list[bool] = []
    copied = contextvars.copy_context()  # the context as it is now, as a worker would inherit it
    worker = threading.Thread(target=lambda: results.append(copied.run(attachment.detach)))
    worker.start()
    worker.join()
    assert results == [False]
    assert _current_label() == "receive"
    assert attachment.detach() is True
    assert not _otel_errors(caplog)


def test_detach_from_a_thread_where_it_is_not_current_is_a_quiet_no() -> None:
    attachment = attach(_ctx("receive"))
    results: list[bool] = []
    worker = threading.Thread(target=lambda: results.append(attachment.detach()))  # a fresh, empty context
    worker.start()
    worker.join()
    assert results == [False]
    assert attachment.detach() is True


def test_a_span_context_attached_and_detached() -> None:
    span = trace.NonRecordingSpan(
        trace.SpanContext(0x1, 0x2, is_remote=True, trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED))
    )
    attachment = attach(trace.set_span_in_context(span))
    assert trace.get_current_span() is span
    assert detach(attachment) is True
    assert trace.get_current_span() is not span


class _StackRuntime(_RuntimeContext):
    """A runtime context of another kind (as OTEL_PYTHON_CONTEXT can select): plain objects as tokens."""

    def __init__(self) -> None:
        self.stack: list[Context] = [Context()]
        self.detached: list[object] = []

    def attach(self, context: Context) -> Any:
        self.stack.append(context)
        return ("token", len(self.stack))

    def get_current(self) -> Context:
        return self.stack[-1]

    def detach(self, token: Any) -> None:
        self.detached.append(token)
        self.stack.pop()


def test_a_runtime_context_of_another_kind_detaches_through_its_own_detach(monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = _StackRuntime()
    with monkeypatch.context() as patch:
        patch.setattr(otel_context, "_RUNTIME_CONTEXT", runtime)
        # What the module picks when it is imported with this runtime: the public functions.
        patch.setattr(_context, "current", _context._current_getter())
        patch.setattr(_context, "_attach", _context._attacher())
        assert _context._attach is otel_context.attach
        attachment = attach(_ctx("receive"))
        assert runtime.get_current() is attachment.ctx
        assert attachment.detach() is True
        assert runtime.detached == [("token", 2)]
        assert len(runtime.stack) == 1
        assert attachment.detach() is False  # only once
        assert runtime.detached == [("token", 2)]
        # And a stale one is left alone there too.
        stale = attach(_ctx("receive"))
        runtime.attach(_ctx("application"))
        assert stale.detach() is False
        assert runtime.detached == [("token", 2)]
