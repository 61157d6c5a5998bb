"""Attaching a context and detaching it again, safely, from code the application calls.

``opentelemetry.context.detach`` resets a ``ContextVar`` token. Two mistakes are easy:

* resetting a token in another ``contextvars.Context`` than the one that made it (a task that
  inherited the context as it was, a callback, another thread) raises inside OpenTelemetry, which
  logs "Failed to detach context" at ERROR level;
* resetting a stale token (the application attached something since) rolls its context back.

:class:`Attachment` detaches only when neither is the case, and otherwise leaves the token for its
owner, or for nobody: a context left attached in a task that ends goes with the task.
"""

from __future__ import annotations

from contextvars import Token
from typing import Callable, Optional

from opentelemetry import context as otel_context
from opentelemetry.context import Context
from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext


__all__ = ["Attachment", "attach", "current", "detach"]


def _current_getter() -> Callable[[], Context]:
    """``opentelemetry.context.get_current``, or, with the default runtime context, the bound ``get`` of the
    ``ContextVar`` it reads: the same value without two Python calls, on a path every message takes."""
    try:
        runtime = otel_context._RUNTIME_CONTEXT  # made once, when opentelemetry.context is imported
        if type(runtime) is ContextVarsRuntimeContext:
            getter: Callable[[], Context] = runtime._current_context.get
            return getter
    except Exception:  # another API version's internals: the public function is always right
        pass
    return otel_context.get_current


current = _current_getter()
"""The current OpenTelemetry context (:func:`opentelemetry.context.get_current`)."""


def _attacher() -> Callable[[Context], object]:
    """``opentelemetry.context.attach``, or, with the default runtime context, the bound ``set`` of its
    ``ContextVar``: the same token without two Python calls (a channel-layer handler call attaches one)."""
    try:
        runtime = otel_context._RUNTIME_CONTEXT
        if type(runtime) is ContextVarsRuntimeContext:
            setter: Callable[[Context], object] = runtime._current_context.set
            return setter
    except Exception:  # another API version's internals: the public function is always right
        pass
    return otel_context.attach


_attach = _attacher()


class Attachment:
    """A context made current by :func:`attach`; :meth:`detach` undoes it where that is safe."""

    __slots__ = ("ctx", "token")

    def __init__(self, ctx: Context, token: object) -> None:
        self.ctx = ctx
        self.token = token

    def detach(self) -> bool:
        """Make the previous context current again, if this is still the current one in its own
        ``contextvars.Context``. Returns whether it did; never raises."""
        token = self.token
        if token is None or current() is not self.ctx:
            return False
        if isinstance(token, Token):
            # The default runtime context: reset the ContextVar directly, so that a token from
            # another Context is a quiet "no" (ValueError) instead of an error log.
            try:
                token.var.reset(token)
            except (ValueError, RuntimeError):  # another Context's token, or one used already
                return False
        else:  # a runtime context of another kind (OTEL_PYTHON_CONTEXT): its own detach
            otel_context.detach(token)  # type: ignore[arg-type]
        self.token = None
        return True


def attach(ctx: Context) -> Attachment:
    """Make ``ctx`` current and return what detaches it."""
    return Attachment(ctx, _attach(ctx))


def detach(attachment: Optional[Attachment]) -> bool:
    """:meth:`Attachment.detach`, for an attachment that may be ``None``."""
    return attachment.detach() if attachment is not None else False
