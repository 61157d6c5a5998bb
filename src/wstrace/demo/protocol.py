"""The voice protocol between the device and the server: binary audio frames and JSON control messages.

The device connects to ``ws://HOST:PORT/voice?encoding=linear16&sample_rate=16000&channels=1&conversation=ID``
(audio format in the query string, as hosted speech APIs take it). Then, per turn:

=========  ============================================  =================================================
direction  message                                       meaning
=========  ============================================  =================================================
device →   binary, 640 bytes                             20 ms of microphone audio (16 kHz mono int16 LE)
device →   ``{"type": "end_of_turn", "turn": N}``        the user stopped speaking (the device's endpointer)
server →   binary, 1,280 bytes                           40 ms of the assistant's reply audio
server →   ``{"type": "reply.done", "turn": N, ...}``    the reply is complete: ``transcript``, ``reply``,
                                                         ``audio_ms``; ``error`` if the pipeline failed
=========  ============================================  =================================================

Every uplink frame is a WebSocket message of its own, as a real device sends it. ``reply.done`` is the end
marker of the reply stream on both ends (:func:`is_reply_end`, given to the instrumentor as ``stream_end``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Optional, Union
from urllib.parse import parse_qs, urlencode


__all__ = [
    "ROUTE",
    "AudioFormat",
    "EndOfTurn",
    "ReplyDone",
    "connect_url",
    "end_of_turn",
    "is_reply_end",
    "parse_control",
    "parse_query",
    "reply_done",
]

ROUTE = "/voice"


@dataclass(frozen=True)
class AudioFormat:
    """What the device streams; the server refuses anything else."""

    encoding: str = "linear16"
    sample_rate: int = 16000
    channels: int = 1


@dataclass(frozen=True)
class EndOfTurn:
    """The device's endpointer decided the user finished speaking."""

    turn: int


@dataclass(frozen=True)
class ReplyDone:
    """The server's last message of a turn."""

    turn: int
    transcript: str = ""
    reply: str = ""
    audio_ms: float = 0.0
    error: str = ""


def connect_url(host: str, port: int, conversation: str, fmt: AudioFormat = AudioFormat()) -> str:
    """The device's URL: route, audio format and conversation id."""
    query = urlencode(
        {
            "encoding": fmt.encoding,
            "sample_rate": fmt.sample_rate,
            "channels": fmt.channels,
            "conversation": conversation,
        }
    )
    return f"ws://{host}:{port}{ROUTE}?{query}"


def parse_query(path: str) -> tuple[AudioFormat, str]:
    """The audio format and conversation id from a request path; raises ``ValueError`` if malformed."""
    _, _, query = path.partition("?")
    params = {key: values[-1] for key, values in parse_qs(query).items()}
    fmt = AudioFormat(
        encoding=params.get("encoding", "linear16"),
        sample_rate=int(params.get("sample_rate", "16000")),
        channels=int(params.get("channels", "1")),
    )
    return fmt, params.get("conversation", "")


def end_of_turn(turn: int) -> str:
    return json.dumps({"type": "end_of_turn", "turn": turn})


def reply_done(done: ReplyDone) -> str:
    message: dict[str, Any] = {
        "type": "reply.done",
        "turn": done.turn,
        "transcript": done.transcript,
        "reply": done.reply,
        "audio_ms": round(done.audio_ms, 1),
    }
    if done.error:
        message["error"] = done.error
    return json.dumps(message)


def parse_control(text: str) -> Optional[Union[EndOfTurn, ReplyDone]]:
    """A control message, or ``None`` for anything unknown or malformed (ignored, never fatal)."""
    try:
        message = json.loads(text)
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "end_of_turn":
            return EndOfTurn(int(message["turn"]))
        if kind == "reply.done":
            return ReplyDone(
                turn=int(message["turn"]),
                transcript=str(message.get("transcript", "")),
                reply=str(message.get("reply", "")),
                audio_ms=float(message.get("audio_ms", 0.0)),
                error=str(message.get("error", "")),
            )
    except (ValueError, KeyError, TypeError):
        pass
    return None


def is_reply_end(payload: object) -> bool:
    """Whether a message ends the reply stream; cheap, as it runs for every message."""
    return isinstance(payload, str) and payload.startswith('{"type": "reply.done"')
