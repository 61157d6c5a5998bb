"""Installs the ASGI middleware in Starlette (and FastAPI) middleware stacks: as they are built, and late.

Starlette builds an application's middleware stack on its first ASGI call,
which is usually the lifespan call, and keeps it. So an ``instrument()`` inside
``lifespan`` (or after the first request) finds stacks already built: the
wrapped ``Starlette.__call__`` rebuilds such a stack once, with the middleware,
before the call that follows. An application that cannot get it (its
``build_middleware_stack`` does not call Starlette's or FastAPI's) gets one
warning naming it, and is left as it was.
"""

from __future__ import annotations

import logging
import weakref
from typing import Any, Callable, Optional

from wstrace._log import warn_once
from wstrace.instrumentation._instrumentor import Settings, Switch, Wrapper
from wstrace.instrumentation.asgi import WstraceASGIMiddleware


__all__ = ["Switch", "Stacks", "build_middleware_stack", "describe", "holds_ours", "instrument_app", "uninstrument_app"]


_log = logging.getLogger("wstrace.instrumentation.starlette")


def _is_otel_middleware(cls: Any) -> bool:
    return getattr(cls, "__name__", "") == "OpenTelemetryMiddleware" and str(getattr(cls, "__module__", "")).startswith(
        "opentelemetry."
    )


def with_ours(user_middleware: list[Any], ours: Any) -> list[Any]:
    """The application's middleware list with ours inserted, or unchanged if it already has it.

    Ours goes first (outermost of the application's middleware, so that every
    other one sees plain payloads and a refusal by any of them is traced),
    except that it goes right inside an ``OpenTelemetryMiddleware`` listed
    there: that one's SERVER span must be current when ours is called, so that
    ours is its child instead of a second root.
    """
    position = 0
    for i, entry in enumerate(user_middleware):
        cls = getattr(entry, "cls", None)
        if cls is WstraceASGIMiddleware:
            return user_middleware  # added by hand: the application's own options win
        if _is_otel_middleware(cls):
            position = i + 1
    return [*user_middleware[:position], ours, *user_middleware[position:]]


def build_middleware_stack(settings: Settings, active: Switch) -> Wrapper:
    """Wrap ``build_middleware_stack`` so that the stack it builds holds our middleware.

    The stack's outermost layer stays Starlette's ``ServerErrorMiddleware``
    (opentelemetry-instrumentation-fastapi checks for it and skips itself
    otherwise), and ours sits inside it, among the application's middleware.
    """
    from starlette.middleware import Middleware  # noqa: PLC0415 - the library loads only once instrumented

    def factory(app: Any) -> WstraceASGIMiddleware:
        return WstraceASGIMiddleware._installed(app, settings, active)

    ours = Middleware(factory)

    def wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        original = getattr(instance, "user_middleware", None)
        if not isinstance(original, list):
            return wrapped(*args, **kwargs)
        # Built from a new list that is then put back: the application's own list never changes.
        instance.user_middleware = with_ours(original, ours)
        try:
            return wrapped(*args, **kwargs)
        finally:
            instance.user_middleware = original

    return wrapper


def describe(app: Any) -> str:
    """The application as a warning names it: class, FastAPI title if any, identity."""
    title = getattr(app, "title", None)
    named = f" {title!r}" if isinstance(title, str) else ""
    return f"{type(app).__module__}.{type(app).__qualname__}{named} at {id(app):#x}"


def holds_ours(stack: Any) -> bool:
    """Whether a built stack has a ``WstraceASGIMiddleware`` among its layers (followed through ``.app``)."""
    seen = 0
    while stack is not None and seen < 64:  # a stack is a chain of a dozen layers; a cycle must not hang
        if isinstance(stack, WstraceASGIMiddleware):
            return True
        stack = getattr(stack, "app", None)
        seen += 1
    return False


def _warn(app: Any, why: str) -> None:
    _log.warning(
        "wstrace: WebSocket connections of %s are not traced: %s; add WstraceASGIMiddleware to it yourself",
        describe(app),
        why,
    )


def rebuild(app: Any) -> bool:
    """Rebuild a built stack so that it holds our middleware; warn once naming the app if it cannot.

    Returns whether the application's stack holds it now. The application's
    own middleware are built again, as Starlette does when a stack is first
    built; connections already open keep the old stack.
    """
    try:
        stack = app.build_middleware_stack()
    except Exception as exc:
        _warn(app, f"rebuilding its middleware stack failed ({type(exc).__name__}: {exc})")
        return False
    if not holds_ours(stack):
        _warn(app, "its build_middleware_stack does not call Starlette's")
        return False
    app.middleware_stack = stack
    return True


class Stacks:
    """Stacks checked since ``instrument()``, per application (weakly): each is checked once, not per call."""

    __slots__ = ("_checked",)

    def __init__(self) -> None:
        self._checked: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()

    def call_wrapper(self, active: Switch) -> Wrapper:
        """Wrap ``Starlette.__call__``: a stack built before ``instrument()`` is rebuilt before it is used."""

        def wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            stack = getattr(instance, "middleware_stack", None)
            if stack is not None and active.on:
                try:
                    if self._checked.get(instance) is not stack:
                        self._check(instance, stack)
                except Exception as exc:  # never into the application's call, and not logged per call
                    warn_once("checking a Starlette middleware stack", exc, logger=_log)
            return wrapped(*args, **kwargs)

        return wrapper

    def _check(self, app: Any, stack: Any) -> None:
        if not holds_ours(stack) and rebuild(app):
            stack = app.middleware_stack
        # A stack that could not take ours is remembered too: one warning per application.
        self._checked[app] = stack


# One application at a time -------------------------------------------------------------------------

_APPS: weakref.WeakKeyDictionary[Any, Switch] = weakref.WeakKeyDictionary()
"""Applications given ``instrument_app()``, with the switch their middleware follows."""


def instrument_app(app: Any, settings: Settings) -> None:
    """Give one application the middleware, whether or not its stack is built yet."""
    if app in _APPS:
        _log.warning("wstrace: %s is instrumented already", describe(app))
        return
    build: Optional[Callable[[], Any]] = getattr(app, "build_middleware_stack", None)
    if build is None or not isinstance(getattr(app, "user_middleware", None), list):
        _log.warning(
            "wstrace: %s is not a Starlette application; add WstraceASGIMiddleware to it yourself", describe(app)
        )
        return
    switch = Switch()
    wrapper = build_middleware_stack(settings, switch)

    def build_with_ours() -> Any:
        return wrapper(build, app, (), {})

    # An instance attribute, as OpenTelemetry's FastAPI instrument_app does:
    # Starlette calls self.build_middleware_stack().
    app.build_middleware_stack = build_with_ours
    _APPS[app] = switch
    if app.middleware_stack is not None and not holds_ours(app.middleware_stack) and not rebuild(app):
        # rebuild() warned; the application keeps the stack it had.
        del _APPS[app]
        del app.build_middleware_stack


def uninstrument_app(app: Any) -> None:
    """Undo :func:`instrument_app`: the stack is built again without the middleware."""
    switch = _APPS.pop(app, None)
    if switch is None:
        return
    switch.on = False
    app.__dict__.pop("build_middleware_stack", None)
    if app.middleware_stack is not None:
        try:
            app.middleware_stack = app.build_middleware_stack()
        except Exception as exc:  # the switch is off: the old stack passes connections through untraced
            _log.warning("wstrace: could not rebuild the middleware stack of %s: %r", describe(app), exc)
