"""Instrumentation for Starlette and FastAPI WebSocket endpoints (https://www.starlette.io/).

Usage::

    from wstrace.instrumentation.starlette import StarletteInstrumentor

    StarletteInstrumentor().instrument(model="message", envelope="negotiate")

or, with no code change, ``opentelemetry-instrument python app.py`` (entry
point ``wstrace-starlette``), or for one application only,
``StarletteInstrumentor.instrument_app(app, model="message")``.

Every ``Starlette`` application, and every ``FastAPI`` one (a subclass that
builds its own stack), gets :class:`~wstrace.instrumentation.asgi.WstraceASGIMiddleware`
in its middleware stack; options come from ``instrument()``. A stack is built
at the application's first ASGI call (usually the lifespan call); one built
before ``instrument()`` (instrumenting inside ``lifespan``, or after requests)
is rebuilt with the middleware at the next call, so the connections that follow
are traced. An application that cannot take the middleware gets one warning
naming it. What is traced is the middleware's business: see
``wstrace.instrumentation.asgi``. After ``uninstrument()`` new stacks are built
without it, and existing ones stop tracing new connections.

Options (keyword or environment variable) are listed in ``docs/configuration.md``;
``docs/adapters/starlette.md`` is the guide.
"""

from __future__ import annotations

from typing import Any, Optional

from opentelemetry import trace
from opentelemetry.metrics import MeterProvider

from wstrace.config import Config
from wstrace.instrumentation._instrumentor import Settings, WstraceInstrumentor
from wstrace.instrumentation.starlette import _server


__all__ = ["StarletteInstrumentor"]


class StarletteInstrumentor(WstraceInstrumentor):
    """Adds the wstrace ASGI middleware to every Starlette and FastAPI application, or to one."""

    @property
    def _switch(self) -> Optional[_server.Switch]:
        return self.__dict__.get("_wstrace_switch")

    @staticmethod
    def instrument_app(
        app: Any,
        *,
        tracer_provider: Optional[trace.TracerProvider] = None,
        meter_provider: Optional[MeterProvider] = None,
        **options: Any,
    ) -> None:
        """Trace one Starlette or FastAPI application, before or after it has started.

        ``options`` are the :class:`~wstrace.config.Config` keywords; a bad one
        raises :class:`~wstrace.exceptions.ConfigError`. A stack already built is
        rebuilt with the middleware; connections already open stay untraced. An
        application that cannot take it is left as it was, with one warning.
        """
        _server.instrument_app(app, Settings.make(Config.load(**options), tracer_provider, meter_provider))

    @staticmethod
    def uninstrument_app(app: Any) -> None:
        """Undo :meth:`instrument_app`: the application's stack is rebuilt without the middleware."""
        _server.uninstrument_app(app)

    def _patch(self, settings: Settings) -> None:
        # Imported here, not at the top: importing the adapter must not import
        # the library (opentelemetry-instrument loads every entry point).
        import starlette.applications as applications  # noqa: PLC0415
        import wrapt  # noqa: PLC0415 - only its import hooks are needed, and only here

        switch = _server.Switch()
        self.__dict__["_wstrace_switch"] = switch
        wrapper = _server.build_middleware_stack(settings, switch)
        self._wrap(applications, "Starlette.build_middleware_stack", wrapper)
        # Stacks built before now (instrument() inside lifespan) are rebuilt at their next call.
        # FastAPI's __call__ reaches it through super().__call__.
        self._wrap(applications, "Starlette.__call__", _server.Stacks().call_wrapper(switch))

        def patch_fastapi(module: Any) -> None:
            # FastAPI overrides build_middleware_stack without calling Starlette's.
            # The hook cannot be removed, so a stale one (from before an
            # uninstrument) does nothing.
            if switch.on and self._switch is switch:
                self._wrap(module, "FastAPI.build_middleware_stack", wrapper)

        # Runs now if FastAPI is imported already, else when it is; never imports it.
        wrapt.register_post_import_hook(patch_fastapi, "fastapi.applications")

    def _uninstrument(self, **kwargs: Any) -> None:
        switch = self.__dict__.pop("_wstrace_switch", None)
        if switch is not None:
            switch.on = False
        super()._uninstrument(**kwargs)
