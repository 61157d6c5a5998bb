"""Installs the ASGI middleware in every Starlette (and FastAPI) middleware stack as it is built."""

from __future__ import annotations

from typing import Any, Callable

from wstrace.instrumentation._instrumentor import Settings
from wstrace.instrumentation.asgi import WstraceASGIMiddleware


__all__ = ["Switch", "build_middleware_stack"]

Wrapper = Callable[[Callable[..., Any], Any, tuple[Any, ...], dict[str, Any]], Any]


class Switch:
    """On from ``instrument()`` to ``uninstrument()``: stacks built meanwhile stop tracing after it."""

    __slots__ = ("on",)

    def __init__(self) -> None:
        self.on = True

    def __call__(self) -> bool:
        return self.on


def _is_otel_middleware(cls: Any) -> bool:
    return getattr(cls, "__name__", "") == "OpenTelemetryMiddleware" and str(getattr(cls, "__module__", "")).startswith(
        "opentelemetry."
    )


def with_ours(user_middleware: list[Any], ours: Any) -> list[Any]:
    """The application's middleware list with ours inserted, or unchanged if it already has it.

    Ours goes first (outermost of the application's middleware, so that every
    other one sees plain payloads and a refusal by any of them is traced),
    except that it goes right inside an ``OpenTelemetryMiddleware`` listed
    there: that one's SERVER span must be current when ours is called, to be
    adopted instead of duplicated.
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
