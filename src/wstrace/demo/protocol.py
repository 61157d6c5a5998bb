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

Over Socket.IO (``--stack socketio``) the same turn is a few events: the device connects with the audio format and
the conversation id as its ``auth`` data (:func:`sio_auth`), emits ``audio`` (one 20 ms frame, ``bytes``) per
frame and ``end_of_turn`` (the turn number); the assistant answers with ``reply.audio`` (:func:`audio_packet`:
the turn and base64 PCM) and ``reply.done`` (:func:`reply_done_fields`). The reply audio is text, not ``bytes``:
a binary event sent through a pub/sub manager is several engine.io packets and carries no per-event trace
context (docs/adapters/socketio.md, "Not yet covered"), so its handler would start a new trace. The gateway hands
each utterance to the assistant through the Redis stream :data:`UTTERANCES`.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any, Optional, Union
from urllib.parse import parse_qs, urlencode


__all__ = [
    "AUDIO",
    "END_OF_TURN",
    "REPLY_AUDIO",
    "REPLY_DONE",
    "ROUTE",
    "UTTERANCES",
    "AudioFormat",
    "EndOfTurn",
    "ReplyDone",
    "audio_packet",
    "connect_url",
    "end_of_turn",
    "is_reply_end",
    "parse_audio_packet",
    "parse_auth",
    "parse_control",
    "parse_query",
    "parse_reply_done",
    "reply_done",
    "reply_done_fields",
    "sio_auth",
]

ROUTE = "/voice"

# Socket.IO events, and the Redis stream from the gateway to the assistant.
AUDIO = "audio"
END_OF_TURN = "end_of_turn"
REPLY_AUDIO = "reply.audio"
REPLY_DONE = "reply.done"
UTTERANCES = "voice:utterances"


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
    return json.dumps(reply_done_fields(done))


def reply_done_fields(done: ReplyDone) -> dict[str, Any]:
    """``reply.done`` as a JSON object: the WebSocket message's text, the Socket.IO event's argument."""
    message: dict[str, Any] = {
        "type": "reply.done",
        "turn": done.turn,
        "transcript": done.transcript,
        "reply": done.reply,
        "audio_ms": round(done.audio_ms, 1),
    }
    if done.error:
        message["error"] = done.error
    return message


def parse_control(text: str) -> Optional[Union[EndOfTurn, ReplyDone]]:
    """A control message, or ``None`` for anything unknown or malformed (ignored, never fatal)."""
    try:
        message = json.loads(text)
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "end_of_turn":
            return EndOfTurn(int(message["turn"]))
    except (ValueError, KeyError, TypeError):
        return None
    return parse_reply_done(message) if kind == "reply.done" else None


def parse_reply_done(message: object) -> Optional[ReplyDone]:
    """A ``reply.done`` object (:func:`reply_done_fields`), or ``None`` if malformed."""
    if not isinstance(message, dict):
        return None
    try:
        return ReplyDone(
            turn=int(message["turn"]),
            transcript=str(message.get("transcript", "")),
            reply=str(message.get("reply", "")),
            audio_ms=float(message.get("audio_ms", 0.0)),
            error=str(message.get("error", "")),
        )
    except (ValueError, KeyError, TypeError):
        return None


def sio_auth(conversation: str, fmt: AudioFormat = AudioFormat()) -> dict[str, Any]:
    """The Socket.IO device's ``auth`` data: the audio format and the conversation id."""
    return {
        "encoding": fmt.encoding,
        "sample_rate": fmt.sample_rate,
        "channels": fmt.channels,
        "conversation": conversation,
    }


def parse_auth(auth: object) -> tuple[AudioFormat, str]:
    """The audio format and conversation id from ``auth`` data; raises ``ValueError`` if malformed."""
    if not isinstance(auth, dict):
        raise ValueError("expected an object")
    try:
        fmt = AudioFormat(str(auth["encoding"]), int(auth["sample_rate"]), int(auth["channels"]))
    except (KeyError, TypeError) as exc:
        raise ValueError(f"bad audio format: {exc}") from None
    return fmt, str(auth.get("conversation", ""))


def audio_packet(turn: int, pcm: bytes) -> dict[str, Any]:
    """A ``reply.audio`` event's argument: the turn and its PCM, base64 (see the module docstring)."""
    return {"turn": turn, "pcm": base64.b64encode(pcm).decode("ascii")}


def parse_audio_packet(packet: object) -> Optional[bytes]:
    """The PCM of a ``reply.audio`` argument, or ``None`` if malformed."""
    if not isinstance(packet, dict) or not isinstance(packet.get("pcm"), str):
        return None
    try:
        return base64.b64decode(packet["pcm"], validate=True)
    except (binascii.Error, ValueError):
        return None


def is_reply_end(payload: object) -> bool:
    """Whether a message ends the reply stream; cheap, as it runs for every message."""
    return isinstance(payload, str) and payload.startswith('{"type": "reply.done"')
