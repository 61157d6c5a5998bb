"""The voice device: streams the user's speech in 20 ms frames and receives the assistant's spoken reply.

Per turn the device speaks a line (paced in real time, one WebSocket message per 20 ms frame, as a
microphone delivers them), adds the trailing silence its endpointer waits for, sends ``end_of_turn``, then
collects the reply audio until ``reply.done``.

Its tracing is one span per turn, ``voice turn``, with the voice-to-voice latency: from the end of the
user's audio (the last frame sent) to the first reply audio received, in seconds, as
``wstrace.voice.turn.latency``. Sends and receives are traced by ``WebsocketsInstrumentor``. With
``conversation_span`` (the ``connection`` model) the connection is opened inside a ``voice conversation``
span, so that the turns belong to the connection's trace; otherwise each turn is a trace of its own, tied to
the others by ``gen_ai.conversation.id``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, Callable, Optional

from opentelemetry import trace
from websockets.asyncio.client import ClientConnection, connect

from wstrace.demo import audio, protocol


__all__ = ["Device", "TurnResult"]

Event = dict[str, Any]

LATENCY = "wstrace.voice.turn.latency"


@dataclass(frozen=True)
class TurnResult:
    """What the device saw of one turn."""

    number: int
    utterance: str
    transcript: str
    reply: str
    latency: Optional[float]
    """Voice-to-voice seconds; ``None`` if no reply audio came."""
    reply_audio: float
    """Seconds of reply audio received."""
    error: str = ""


class Device:
    """A device that holds one conversation of several turns over one connection.

    ``speak(line, turn)`` returns the line as 16 kHz PCM; ``endpointing(turn)`` is the seconds of trailing
    silence the endpointer waits for before it ends the turn; ``speed`` divides the pacing of frames.
    """

    def __init__(
        self,
        url: str,
        conversation: str,
        *,
        speak: Callable[[str, int], Awaitable[bytes]],
        endpointing: Callable[[int], float],
        speed: float = 1.0,
        conversation_span: bool = False,
        tracer: Optional[trace.Tracer] = None,
        on_event: Optional[Callable[[Event], None]] = None,
    ) -> None:
        self.url = url
        self.conversation = conversation
        self._speak = speak
        self._endpointing = endpointing
        self._speed = speed
        self._conversation_span = conversation_span
        self._tracer = tracer or trace.get_tracer("wstrace.demo.device")
        self._on_event = on_event or (lambda event: None)

    async def converse(self, utterances: Sequence[str]) -> list[TurnResult]:
        """Say each utterance in turn and wait for each reply; returns what happened."""
        span = (
            self._tracer.start_as_current_span(
                "voice conversation", attributes={"gen_ai.conversation.id": self.conversation}
            )
            if self._conversation_span
            else contextlib.nullcontext()
        )
        with span:
            async with connect(self.url) as ws:
                self._on_event({"event": "connected", "url": self.url})
                return [await self._turn(ws, number, line) for number, line in enumerate(utterances, 1)]

    async def _turn(self, ws: ClientConnection, number: int, line: str) -> TurnResult:
        speech = await self._speak(line, number)  # the user's voice: before the turn, not part of it
        with self._tracer.start_as_current_span(
            "voice turn",
            attributes={
                "gen_ai.conversation.id": self.conversation,
                "wstrace.voice.turn.number": number,
                "wstrace.voice.turn.utterance": line,
            },
        ) as span:
            silence = self._endpointing(number)
            frames = audio.chunks(speech + audio.silence(silence, f"{self.conversation}:{number}"), audio.FRAME_BYTES)
            self._on_event(
                {
                    "event": "speaking",
                    "turn": number,
                    "utterance": line,
                    "speech_seconds": audio.duration(speech),
                    "silence_seconds": silence,
                    "frames": len(frames),
                }
            )
            await self._stream_microphone(ws, frames)
            speech_ended = time.monotonic()
            await ws.send(protocol.end_of_turn(number))

            latency: Optional[float] = None
            received = 0
            done: Optional[protocol.ReplyDone] = None
            while done is None:
                message = await ws.recv()
                if isinstance(message, bytes):
                    if latency is None:
                        latency = time.monotonic() - speech_ended
                        span.set_attribute(LATENCY, latency)
                        self._on_event({"event": "first_audio", "turn": number, "latency": latency})
                    received += len(message)
                    continue
                control = protocol.parse_control(message)
                if isinstance(control, protocol.ReplyDone) and control.turn == number:
                    done = control
            reply_audio = received / (audio.SAMPLE_RATE * 2)
            span.set_attributes(
                {
                    "wstrace.voice.turn.transcript": done.transcript,
                    "wstrace.voice.turn.reply": done.reply,
                    "wstrace.voice.turn.reply_audio": reply_audio,
                }
            )
            self._on_event(
                {"event": "heard", "turn": number, "reply": done.reply, "reply_audio": reply_audio, "error": done.error}
            )
            return TurnResult(number, line, done.transcript, done.reply, latency, reply_audio, done.error)

    async def _stream_microphone(self, ws: ClientConnection, frames: list[bytes]) -> None:
        """Send each frame when the microphone would have delivered it: every 20 ms, divided by ``speed``."""
        frame_seconds = audio.FRAME_MS / 1000 / self._speed
        start = time.monotonic()
        for index, frame in enumerate(frames):
            delay = start + (index + 1) * frame_seconds - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await ws.send(frame)
