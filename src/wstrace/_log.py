"""Internal failures of the instrumentation, logged once per kind, never once per message."""

from __future__ import annotations

import logging
from typing import Optional


__all__ = ["log", "plain_peer", "warn_once"]

_log = log = logging.getLogger("wstrace")
_warned: set[str] = set()


def warn_once(what: str, exc: Optional[BaseException] = None, *, logger: logging.Logger = _log) -> None:
    """Log that ``what`` failed (with ``exc``'s traceback) the first time it does; tracing carries on without it."""
    if what in _warned:
        return
    _warned.add(what)
    if exc is None:
        logger.warning("wstrace: %s", what)
    else:
        logger.warning("wstrace: %s failed; tracing continues without it", what, exc_info=exc)


def plain_peer(side: str, session_id: str) -> None:
    """Under ``envelope="always"``, the first message of a connection that came without an envelope."""
    _log.warning(
        "wstrace: envelope='always' on this %s's connection %s, but the peer sent a message with no envelope: "
        "is it instrumented, with the same envelope format? Such messages are delivered as they are; the peer "
        "may not strip the envelopes this end sends.",
        side,
        session_id,
    )
