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

:class:`SocketioDevice` is the same device over Socket.IO (``--stack socketio``): a python-socketio
``AsyncClient``, traced by ``SocketioInstrumentor``, that emits an ``audio`` event per frame and ``end_of_turn``,
and whose handlers hand the ``reply.audio`` and ``reply.done`` events to the turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol, Union

from opentelemetry import trace
from websockets.asyncio.client import ClientConnection, connect

from wstrace.demo import audio, protocol


__all__ = ["Device", "SocketioDevice", "TurnResult"]

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


Received = Union[bytes, protocol.ReplyDone, None]
"""What the device gets from the assistant: reply audio, the end of the reply, or something to ignore."""


class Link(Protocol):
    """The device's connection to the assistant, whatever carries it."""

    async def send_audio(self, frame: bytes) -> None: ...

    async def end_turn(self, number: int) -> None: ...

    async def receive(self) -> Received: ...


class _WebSocketLink:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    async def send_audio(self, frame: bytes) -> None:
        await self.ws.send(frame)

    async def end_turn(self, number: int) -> None:
        await self.ws.send(protocol.end_of_turn(number))

    async def receive(self) -> Received:
        message = await self.ws.recv()
        if isinstance(message, bytes):
            return message
        control = protocol.parse_control(message)
        return control if isinstance(control, protocol.ReplyDone) else None


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
            async with self.connect() as link:
                self._on_event({"event": "connected", "url": self.url})
                return [await self._turn(link, number, line) for number, line in enumerate(utterances, 1)]

    @contextlib.asynccontextmanager
    async def connect(self) -> AsyncIterator[Link]:
        """The connection to the assistant, for the whole conversation."""
        async with connect(self.url) as ws:
            yield _WebSocketLink(ws)

    async def _turn(self, link: Link, number: int, line: str) -> TurnResult:
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
            await self._stream_microphone(link, frames)
            speech_ended = time.monotonic()
            await link.end_turn(number)

            latency: Optional[float] = None
            received = 0
            done: Optional[protocol.ReplyDone] = None
            while done is None:
                message = await link.receive()
                if isinstance(message, bytes):
                    if latency is None:
                        latency = time.monotonic() - speech_ended
                        span.set_attribute(LATENCY, latency)
                        self._on_event({"event": "first_audio", "turn": number, "latency": latency})
                    received += len(message)
                elif message is not None and message.turn == number:
                    done = message
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

    async def _stream_microphone(self, link: Link, frames: list[bytes]) -> None:
        """Send each frame when the microphone would have delivered it: every 20 ms, divided by ``speed``."""
        frame_seconds = audio.FRAME_MS / 1000 / self._speed
        start = time.monotonic()
        for index, frame in enumerate(frames):
            delay = start + (index + 1) * frame_seconds - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await link.send_audio(frame)


class _SocketioLink:
    """Events from the client's handlers, queued for the turn; the client's end queues ``ConnectionError``."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.inbox: asyncio.Queue[Union[Received, ConnectionError]] = asyncio.Queue()

    async def send_audio(self, frame: bytes) -> None:
        await self.client.emit(protocol.AUDIO, frame)

    async def end_turn(self, number: int) -> None:
        await self.client.emit(protocol.END_OF_TURN, number)

    async def receive(self) -> Received:
        item = await self.inbox.get()
        if isinstance(item, ConnectionError):
            raise item
        return item


class SocketioDevice(Device):
    """The device over Socket.IO; ``url`` is the gateway's, ``http://HOST:PORT``."""

    @contextlib.asynccontextmanager
    async def connect(self) -> AsyncIterator[Link]:
        # Imported here: python-socketio is the demo-socketio extra, needed only by this stack.
        socketio: Any = importlib.import_module("socketio")
        # The demo handles Ctrl-C (it stops its children); python-socketio's own handler would cancel every task.
        client = socketio.AsyncClient(handle_sigint=False)
        link = _SocketioLink(client)

        async def on_audio(packet: object) -> None:
            link.inbox.put_nowait(protocol.parse_audio_packet(packet))

        async def on_done(fields: object) -> None:
            link.inbox.put_nowait(protocol.parse_reply_done(fields))

        async def on_disconnect(*reason: object) -> None:
            link.inbox.put_nowait(ConnectionError("the gateway closed the connection"))

        client.on(protocol.REPLY_AUDIO, on_audio)
        client.on(protocol.REPLY_DONE, on_done)
        client.on("disconnect", on_disconnect)
        try:
            await client.connect(
                self.url, auth=protocol.sio_auth(self.conversation), transports=["websocket"], wait_timeout=10
            )
        except socketio.exceptions.ConnectionError as exc:
            raise ConnectionError(f"cannot connect to the gateway at {self.url}: {exc}") from None
        try:
            yield link
        finally:
            await client.disconnect()
