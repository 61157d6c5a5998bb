"""The close rules (wstrace._close): one place decides code, initiator and error for every adapter."""

from __future__ import annotations

import enum
from typing import Any, Optional

import pytest

from wstrace._close import Closing, Outcome, as_code, asgi_close, asgi_disconnect, outcome, summarised


def _closing(*events: tuple[str, Any, str]) -> Closing:
    closing = Closing()
    for side, code, reason in events:
        (closing.sent if side == "sent" else closing.received)(code, reason)
    return closing


@pytest.mark.parametrize(
    ("events", "local_end", "error", "expected"),
    [
        # A full closing handshake: the first frame's sender is the initiator, its code is recorded.
        ((("sent", 1000, "bye"), ("received", 1000, "")), False, None, Outcome(1000, "bye", "local", False)),
        ((("received", 1001, "away"), ("sent", 1001, "")), False, None, Outcome(1001, "away", "remote", False)),
        # A frame without a status code is 1005, whichever way the library says "none".
        ((("received", None, ""), ("sent", None, "")), False, None, Outcome(1005, "", "remote", False)),
        ((("received", 0, ""),), False, None, Outcome(1005, "", "remote", False)),
        ((("received", 1005, ""),), False, None, Outcome(1005, "", "remote", False)),
        # Error codes are errors.
        ((("received", 1011, "boom"), ("sent", 1011, "")), False, None, Outcome(1011, "boom", "remote", True)),
        # The peer never answered this end's close frame: 1006, local, error.
        ((("sent", 1000, "bye"),), False, None, Outcome(1006, "bye", "local", True)),
        # No frame at all: dropped TCP connection, unless this end dropped it on purpose.
        ((), False, None, Outcome(1006, "", None, True)),
        ((), True, None, Outcome(None, "", "local", False)),
        ((), True, RuntimeError("x"), Outcome(None, "", "local", True)),
        # A library reporting 1006 as a received code means no frame arrived.
        ((("received", 1006, ""),), False, None, Outcome(1006, "", None, True)),
    ],
)
def test_outcome(
    events: tuple[tuple[str, Any, str], ...], local_end: bool, error: Optional[BaseException], expected: Outcome
) -> None:
    assert outcome(_closing(*events), error=error, local_end=local_end) == expected


def test_only_the_first_frame_of_each_side_counts_and_reasons_are_capped() -> None:
    closing = _closing(("received", 4000, "x" * 200), ("received", 1000, "later"), ("sent", 3000, "ours"))
    end = outcome(closing, error=ValueError("handler"))
    assert end == Outcome(4000, "x" * 123, "remote", True)


def test_bytes_reasons_and_int_enums_are_plain() -> None:
    class Code(enum.IntEnum):
        GOING_AWAY = 1001

    end = outcome(_closing(("received", Code.GOING_AWAY, b"caf\xc3\xa9"), ("sent", 1001, "")))
    assert end.code == 1001 and type(end.code) is int
    assert end.reason == "café"


def test_reported_once_any_frame_went_by() -> None:
    closing = Closing()
    assert not closing.reported
    closing.received(1006, "")  # a library's "no frame": still nothing reported
    assert not closing.reported
    closing.sent(1000, "bye")
    assert closing.reported


def test_non_text_reasons_and_bool_codes_are_dropped() -> None:
    end = outcome(_closing(("received", True, 42), ("sent", 1000, "")))
    # True is not a close code (a frame without a status), and 42 is not a reason.
    assert end == Outcome(1005, "", "remote", False)


@pytest.mark.parametrize(
    ("code", "reason", "initiator", "local_end", "expected"),
    [
        # A completed closing handshake this end started.
        (1000, "bye", "local", False, Outcome(1000, "bye", "local", False)),
        # This end sent a close frame and the peer never answered.
        (1006, "bye", "local", False, Outcome(1006, "bye", "local", True)),
        # The peer started it.
        (1001, "away", "remote", False, Outcome(1001, "away", "remote", False)),
        (1011, "boom", "remote", False, Outcome(1011, "boom", "remote", True)),
        # This end dropped the connection on purpose: no code, not an error.
        (None, "", "local", True, Outcome(None, "", "local", False)),
        # The TCP connection dropped.
        (None, "", None, False, Outcome(1006, "", None, True)),
        (1006, "", None, False, Outcome(1006, "", None, True)),
    ],
)
def test_summarised_close_gives_the_same_outcome_as_the_frames(
    code: Optional[int], reason: str, initiator: Optional[str], local_end: bool, expected: Outcome
) -> None:
    closing = Closing()
    dropped_on_purpose = summarised(closing, code, reason, initiator)  # type: ignore[arg-type]
    assert dropped_on_purpose is local_end
    assert outcome(closing, local_end=dropped_on_purpose) == expected


class Events:
    """Close frames reported by a translation, fed to a Closing as ConnectionTracer feeds its own."""

    def __init__(self) -> None:
        self.closing = Closing()

    def close_sent(self, code: Optional[int] = None, reason: str = "") -> None:
        self.closing.sent(code, reason)

    def close_received(self, code: Optional[int] = None, reason: str = "") -> None:
        self.closing.received(code, reason)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        # The peer's close frame: its code and reason, initiated remotely.
        ({"code": 4001, "reason": "bye"}, Outcome(4001, "bye", "remote", False)),
        ({"code": 1001, "reason": ""}, Outcome(1001, "", "remote", False)),
        ({"code": 1005, "reason": ""}, Outcome(1005, "", "remote", False)),
        ({"reason": ""}, Outcome(1005, "", "remote", False)),
        ({"code": 1011, "reason": "oops"}, Outcome(1011, "oops", "remote", True)),
        # Made up by the server, without a reason: the transport was lost...
        ({"code": 1006}, Outcome(1006, "", None, True)),
        ({"code": 1005}, Outcome(1006, "", None, True)),
        ({}, Outcome(1006, "", None, True)),
        ({"code": 1006, "reason": "lost"}, Outcome(1006, "", None, True)),
        # ...or the server shut down: a normal close of this end's.
        ({"code": 1012}, Outcome(1012, "", "local", False)),
        # Other codes without a reason are the peer's.
        ({"code": 1000}, Outcome(1000, "", "remote", False)),
    ],
)
def test_asgi_disconnect(message: dict[str, Any], expected: Outcome) -> None:
    events = Events()
    asgi_disconnect(events, message)
    assert outcome(events.closing) == expected


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ({"type": "websocket.close"}, Outcome(1000, "", "local", False)),
        ({"type": "websocket.close", "code": 4002, "reason": "done"}, Outcome(4002, "done", "local", False)),
        ({"type": "websocket.close", "code": 1011, "reason": None}, Outcome(1011, "", "local", True)),
    ],
)
def test_asgi_close_is_a_handshake_this_end_started(message: dict[str, Any], expected: Outcome) -> None:
    events = Events()
    asgi_close(events, message)
    assert outcome(events.closing) == expected


class _Code(enum.IntEnum):
    GOING_AWAY = 1001


@pytest.mark.parametrize(
    ("value", "code"),
    [(1000, 1000), (_Code.GOING_AWAY, 1001), ("4000", 4000), (None, None), ("going", None), (object(), None)],
)
def test_as_code_reads_what_a_library_close_takes(value: Any, code: Optional[int]) -> None:
    """The code an application passed to ``close()``: anything ``int()`` takes, else none."""
    assert as_code(value) == code
    assert as_code(value).__class__ is (int if code is not None else type(None))
