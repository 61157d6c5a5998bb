"""One server's own options, carried by the ``process_request`` hook given to its ``serve()``."""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

from wstrace._log import warn_once
from wstrace.exceptions import ConfigError
from wstrace.instrumentation._instrumentor import Settings, option_overrides


__all__ = ["ServerOptions", "server_options"]

Hook = Callable[[Any, Any], Any]


class ServerOptions:
    """A ``process_request`` hook holding one server's options, and the application's own hook if any.

    The handshake wrapper recognises it and traces the server's connections with these options.
    Called directly (websockets not instrumented, or instrumentation suppressed), it is just the
    application's hook.
    """

    __slots__ = ("_derived", "hook", "overrides")

    def __init__(self, hook: Optional[Hook], overrides: Mapping[str, Any]) -> None:
        self.hook = hook
        self.overrides = dict(overrides)
        # (instrument()'s settings, this server's): re-derived after a new instrument().
        self._derived: Optional[tuple[Settings, Settings]] = None

    def __call__(self, connection: Any, request: Any) -> Any:
        return self.hook(connection, request) if self.hook is not None else None

    def settings(self, base: Settings) -> Settings:
        """``base`` (``instrument()``'s settings) with this server's options; ``base`` if that fails."""
        derived = self._derived
        if derived is not None and derived[0] is base:
            return derived[1]
        try:
            mine = base.with_options(self.overrides)
        except Exception as exc:  # options were checked by server_options(); never fail a handshake
            warn_once("applying server_options()", exc)
            mine = base
        self._derived = (base, mine)  # a race with another thread derives an equal value: harmless
        return mine


def server_options(process_request: Optional[Hook] = None, /, **options: Any) -> Callable[[Any, Any], Any]:
    """Options for one websockets server, given as its ``process_request``.

    ``serve(handler, host, port, process_request=server_options(envelope="always", trust="link"))``
    traces that server's connections with these options (any option of ``instrument()`` but the
    providers); options not given, or given as ``None``, keep ``instrument()``'s. The application's
    own hook, if it has one, comes first: ``server_options(check_token, envelope="always")``.
    Works with asyncio and sync servers. A bad or unknown option raises
    :class:`~wstrace.exceptions.ConfigError` naming it.
    """
    if process_request is not None and not callable(process_request):
        raise ConfigError(f"process_request: expected a callable, got {process_request!r}")
    overrides = option_overrides(options)
    if isinstance(process_request, ServerOptions):  # options wrapped twice: the outer call's win
        overrides = {**process_request.overrides, **overrides}
        process_request = process_request.hook
    return ServerOptions(process_request, overrides)
