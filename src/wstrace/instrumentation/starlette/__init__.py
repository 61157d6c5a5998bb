"""Instrumentation for Starlette and FastAPI WebSocket endpoints (https://www.starlette.io/).

Usage::

    from wstrace.instrumentation.starlette import StarletteInstrumentor

    StarletteInstrumentor().instrument(model="message", envelope="negotiate")

or, with no code change, ``opentelemetry-instrument python app.py`` (entry
point ``wstrace-starlette``).

Every ``Starlette`` application, and every ``FastAPI`` one (a subclass that
builds its own stack), gets :class:`~wstrace.instrumentation.asgi.WstraceASGIMiddleware`
in its middleware stack when the stack is built, at the first request or
connection; options come from ``instrument()``. What is traced is the
middleware's business: see ``wstrace.instrumentation.asgi``. Applications whose
stack was built before ``instrument()`` are not traced; after ``uninstrument()``
new stacks are built without it, and existing ones stop tracing new connections.

Options (keyword or environment variable) are listed in ``docs/configuration.md``;
``docs/adapters/starlette.md`` is the guide.
"""

from __future__ import annotations

from typing import Any, Optional

from wstrace.instrumentation._instrumentor import Settings, WstraceInstrumentor
from wstrace.instrumentation.starlette import _server
from wstrace.instrumentation.starlette.package import _instruments


__all__ = ["StarletteInstrumentor"]


class StarletteInstrumentor(WstraceInstrumentor):
    """Adds the wstrace ASGI middleware to every Starlette and FastAPI application."""

    _module = "starlette"
    _instruments = _instruments

    @property
    def _switch(self) -> Optional[_server.Switch]:
        return self.__dict__.get("_wstrace_switch")

    def _patch(self, settings: Settings) -> None:
        # Imported here, not at the top: importing the adapter must not import
        # the library (opentelemetry-instrument loads every entry point).
        import starlette.applications as applications  # noqa: PLC0415
        import wrapt  # noqa: PLC0415 - only its import hooks are needed, and only here

        switch = _server.Switch()
        self.__dict__["_wstrace_switch"] = switch
        wrapper = _server.build_middleware_stack(settings, switch)
        self._wrap(applications, "Starlette.build_middleware_stack", wrapper)

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
