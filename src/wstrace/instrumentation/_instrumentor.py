"""What every adapter's instrumentor shares: options, the tracer, and patch bookkeeping."""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
import types
from dataclasses import fields, replace
from typing import Any, Awaitable, Callable, Collection, Mapping, Optional
from urllib.parse import urlsplit

import wrapt
from opentelemetry import trace
from opentelemetry.instrumentation.dependencies import DependencyConflictError, get_dependency_conflicts
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]
from opentelemetry.instrumentation.utils import is_instrumentation_enabled, unwrap
from opentelemetry.metrics import MeterProvider

from wstrace.config import Config
from wstrace.connection import NOTHING_TO_END, ConnectionTracer, SendHandle
from wstrace.metrics import Instruments
from wstrace.version import __version__


__all__ = [
    "Settings",
    "Switch",
    "Wrapped",
    "Wrapper",
    "WstraceInstrumentor",
    "claim_engineio",
    "client_tracer",
    "end_after",
    "engineio_request",
    "is_instrumentation_enabled",
    "option_overrides",
    "send_then_end",
]

Wrapped = Callable[..., Any]
"""The library's method or function a wrapper is given."""
Wrapper = Callable[[Wrapped, Any, tuple[Any, ...], dict[str, Any]], Any]
"""A wrapt-style wrapper: ``wrapper(wrapped, instance, args, kwargs)``."""

_CONFIG_KEYS = frozenset(f.name for f in fields(Config))
_OTHER_KEYS = frozenset({"tracer_provider", "meter_provider", "skip_dep_check"})
_log = logging.getLogger(__name__)
_UNSET = object()
_WRAPT = object()  # a patch made by wrapt, which ``unwrap`` undoes
_ENGINEIO_OWNERS: set[str] = set()


def claim_engineio(owner: str, on: bool) -> None:
    """An adapter that traces engine.io connections itself (Socket.IO) claims them while it is instrumented."""
    if on:
        _ENGINEIO_OWNERS.add(owner)
    else:
        _ENGINEIO_OWNERS.discard(owner)


def engineio_request(query: Any) -> bool:
    """Whether a WebSocket upgrade is an engine.io connection that another adapter traces: one claims them
    (:func:`claim_engineio`), and the query has an ``EIO`` parameter and ``transport=websocket``. The
    WebSocket-level adapters then stand down: no spans, no envelope, no headers. Never raises."""
    if not _ENGINEIO_OWNERS:
        return False
    try:
        text = query.decode("latin-1") if isinstance(query, (bytes, bytearray)) else str(query or "")
        if "EIO=" not in text:
            return False
        keys = {part.partition("=")[0]: part.partition("=")[2] for part in text.split("&")}
        return "EIO" in keys and keys.get("transport") == "websocket"
    except Exception:
        return False


class Switch:
    """On from ``instrument()`` to ``uninstrument()``: what an adapter built meanwhile (an app's middleware
    stack, a router's wrapper) asks before tracing, so that it stops tracing after ``uninstrument()``."""

    __slots__ = ("on",)

    def __init__(self) -> None:
        self.on = True

    def __call__(self) -> bool:
        return self.on


class Settings:
    """The tracer and options an adapter's wrappers read, fixed at ``instrument()``."""

    __slots__ = ("config", "instruments", "meter_provider", "tracer")

    def __init__(
        self,
        tracer: trace.Tracer,
        config: Config,
        instruments: Optional[Instruments] = None,
        meter_provider: Optional[MeterProvider] = None,
    ) -> None:
        self.tracer = tracer
        self.config = config
        self.instruments = instruments
        self.meter_provider = meter_provider  # kept for with_options(metrics=True) when these have none

    def with_options(self, overrides: Mapping[str, Any]) -> Settings:
        """These settings with some options replaced (values from :func:`option_overrides`): one server's own.

        The tracer is shared; so are the instruments, made here only when ``metrics`` is turned on for a
        server while ``instrument()`` turned it off.
        """
        config = replace(self.config, **overrides)
        instruments = None
        if config.metrics:
            instruments = self.instruments or Instruments(self.meter_provider)
        return Settings(self.tracer, config, instruments, self.meter_provider)

    @classmethod
    def make(
        cls,
        config: Config,
        tracer_provider: Optional[trace.TracerProvider] = None,
        meter_provider: Optional[MeterProvider] = None,
    ) -> Settings:
        """wstrace's tracer from ``tracer_provider`` (default: the global one), and its instruments
        from ``meter_provider`` unless the ``metrics`` option is off."""
        tracer = trace.get_tracer(
            "wstrace",
            __version__,
            tracer_provider=tracer_provider,
            schema_url="https://opentelemetry.io/schemas/1.26.0",
        )
        return cls(tracer, config, Instruments(meter_provider) if config.metrics else None, meter_provider)


def option_overrides(options: Mapping[str, Any]) -> dict[str, Any]:
    """Parse options given explicitly for one server (or connection), for :meth:`Settings.with_options`.

    Only the options given (not ``None``) are returned, parsed; the others keep ``instrument()``'s values,
    so no environment variable is read here. A bad or unknown option raises
    :class:`~wstrace.exceptions.ConfigError` naming it: this is the application's own call, not start-up.
    """
    given = {name: value for name, value in options.items() if value is not None}
    config = Config.load(environ={}, **given)
    return {name: getattr(config, name) for name in given}


class WstraceInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Base of the ``<Lib>Instrumentor`` classes.

    Subclasses name their library and version range and implement
    :meth:`_patch`, calling :meth:`_wrap` for each patch so that
    ``uninstrument()`` restores exactly the originals.
    """

    _module: str = ""
    """Import name of the instrumented library: the adapter's ``package._library``."""
    _instruments: Collection[str] = ()
    """Requirement strings of the supported versions (read by ``opentelemetry-instrument``): the adapter's
    ``package._instruments``."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls._module:  # named by the class itself, or inherited from an adapter's instrumentor
            return
        # The library is named once, in the package.py next to the instrumentor, which OpenTelemetry's
        # tooling reads too.
        package = importlib.import_module(f"{cls.__module__}.package")
        cls._module = package._library
        cls._instruments = package._instruments

    @property
    def _patched(self) -> list[tuple[Any, str, Any]]:
        # BaseInstrumentor is a singleton whose __init__ runs on every call,
        # so the list lives in the instance dict, created once.
        return self.__dict__.setdefault("_wstrace_patched", [])  # type: ignore[no-any-return]

    def instrumentation_dependencies(self) -> Collection[str]:
        return self._instruments

    def instrument(self, **kwargs: Any) -> None:
        """Patch the library with these options; a second call keeps the first call's, and says which of its
        own options it ignored (``uninstrument()`` first to change them)."""
        if self.is_instrumented_by_opentelemetry:
            first: dict[str, Any] = self.__dict__.get("_wstrace_options", {})
            ignored = sorted(k for k, v in kwargs.items() if k != "skip_dep_check" and first.get(k, _UNSET) != v)
            if ignored:
                _log.warning(
                    "wstrace: %s is already instrumented; this call's %s ignored (call uninstrument() first)",
                    type(self).__name__,
                    ", ".join(f"{name}={kwargs[name]!r}" for name in ignored),
                )
                return
        else:
            self.__dict__["_wstrace_options"] = dict(kwargs)
        super().instrument(**kwargs)

    def _instrument(self, **kwargs: Any) -> None:
        # opentelemetry-instrument skips the version check for each entry point
        # of a distribution that declares several, so check here: both errors
        # make it skip this adapter instead of aborting start-up.
        importlib.import_module(self._module)
        conflict = get_dependency_conflicts(self._instruments)
        if conflict is not None:
            raise DependencyConflictError(conflict)
        unknown = set(kwargs) - _CONFIG_KEYS - _OTHER_KEYS
        if unknown:
            # A warning, not an error: a distro may pass keywords of its own, and
            # raising here would abort the application's start-up.
            _log.warning("wstrace: ignoring unknown instrument() option(s): %s", ", ".join(sorted(unknown)))
        options = {k: v for k, v in kwargs.items() if k in _CONFIG_KEYS}
        self._patch(Settings.make(Config.load(**options), kwargs.get("tracer_provider"), kwargs.get("meter_provider")))

    def _uninstrument(self, **kwargs: Any) -> None:
        while self._patched:
            owner, name, own = self._patched.pop()
            if own is _WRAPT:
                unwrap(owner, name)
            elif own is _UNSET:
                delattr(owner, name)  # it was inherited
            else:
                setattr(owner, name, own)

    def _patch(self, settings: Settings) -> None:
        raise NotImplementedError

    def _wrap(self, owner: Any, name: str, wrapper: Callable[..., Any], *, hot: bool = False) -> None:
        """Patch ``owner.<name>`` (``name`` may be dotted, as ``Class.method``) with a wrapt-style ``wrapper``.

        ``hot``: a method on the path every message takes (send, receive), replaced by a plain function
        that calls ``wrapper`` as wrapt would (see :meth:`_replace`).
        """
        if hot:
            self._replace(owner, name, functools.partial(_method, wrapper=wrapper))
            return
        *path, leaf = name.split(".")
        for part in path:
            owner = getattr(owner, part)
        wrapt.wrap_function_wrapper(owner, leaf, wrapper)
        self._patched.append((owner, leaf, _WRAPT))

    def _replace(self, owner: Any, name: str, make: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
        """Replace the method ``owner.<name>`` with the function ``make(original)`` returns.

        For the methods every message takes: a wrapt wrapper costs about 5,900 instructions per call, a
        plain function 1,200 and a coroutine function 1,900 (docs/performance.md), which is much of what a
        stream's chunk costs. ``make`` keeps the method's kind (a coroutine function for one); an async
        wrapper is best written as the method itself, so that a waiting receive holds one frame, not two.
        """
        *path, leaf = name.split(".")
        for part in path:
            owner = getattr(owner, part)
        original = getattr(owner, leaf)
        own = vars(owner).get(leaf, _UNSET)  # put back exactly: the class's own attribute, or none
        setattr(owner, leaf, functools.wraps(original)(make(original)))
        self._patched.append((owner, leaf, own))


def _method(original: Callable[..., Any], wrapper: Callable[..., Any]) -> Callable[..., Any]:
    """In place of the method ``original``, a function calling ``wrapper(bound original, self, args, kwargs)``,
    as wrapt does; a coroutine function if ``original`` is one (callers may check)."""
    bind = types.MethodType

    async def coroutine_method(self: Any, *args: Any, **kwargs: Any) -> Any:
        return await wrapper(bind(original, self), self, args, kwargs)

    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        return wrapper(bind(original, self), self, args, kwargs)

    return coroutine_method if inspect.iscoroutinefunction(original) else method


def send_then_end(
    ct: ConnectionTracer, handle: SendHandle, wrapped: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Call the library's send, then end the message's span (with the error, re-raised, if it failed)."""
    if handle is NOTHING_TO_END:  # a stream chunk, or nothing recorded: no try block on the hot path
        return wrapped(*args, **kwargs)
    try:
        result = wrapped(*args, **kwargs)
    except BaseException as exc:
        ct.send_end(handle, exc)
        raise
    ct.send_end(handle)
    return result


async def end_after(ct: ConnectionTracer, handle: SendHandle, sending: Awaitable[Any]) -> Any:
    """:func:`send_then_end` for a send that is awaited: the span ends when the awaitable does."""
    try:
        result = await sending
    except BaseException as exc:
        ct.send_end(handle, exc)
        raise
    ct.send_end(handle)
    return result


def client_tracer(settings: Settings, url: str) -> ConnectionTracer:
    """Start a client's handshake span for a ``ws://`` or ``wss://`` URL (aiohttp also takes ``http(s)://``).

    A URL that does not parse still gets its span: the library refuses it, and the span records that.
    """
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower() or "ws"
        host = parts.hostname
        port: Optional[int] = parts.port or (443 if scheme in ("wss", "https") else 80)
        path = parts.path or "/"
    except ValueError:
        scheme, host, port, path = "ws", None, None, "/"
    return ConnectionTracer.client(
        settings.tracer,
        settings.config,
        url=url,
        scheme=scheme,
        host=host,
        port=port,
        path=path,
        instruments=settings.instruments,
    )
