"""The Socket.IO stack's gateway (``--stack socketio``): takes the device's audio, hands each utterance to the
assistant through Redis, and delivers the assistant's answer, written as a python-socketio user would.

A ``socketio.AsyncServer`` on aiohttp with an ``AsyncRedisManager``: the device connects with its audio format
and conversation id as ``auth`` data, emits an ``audio`` event per 20 ms frame, which the gateway buffers, and
``end_of_turn``, on which the gateway adds the utterance (the device's sid, the conversation, the turn number and
the audio) to the Redis stream ``voice:utterances`` and goes back to listening. The assistant process reads the
stream and answers through its own write-only ``AsyncRedisManager``; this server's manager receives those emits
and delivers them to the device's sid: the gateway holds no reply logic at all.

Tracing here is what an application writes on top of the instrumentor: ``SocketioInstrumentor`` traces the
connection, the events and the manager's deliveries; the stream entry carries the trace context with
``wstrace.redis.AsyncRedisHop`` (its ``xadd`` span, a PRODUCER child of the ``end_of_turn`` handler's span).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Awaitable
from typing import Any, Callable, Optional

from wstrace.demo import audio, protocol
from wstrace.redis import AsyncRedisHop


__all__ = ["Gateway"]

_log = logging.getLogger(__name__)

Event = dict[str, Any]

MAX_UTTERANCE_SECONDS = 60
"""A turn's audio is buffered in memory: a device that never ends its turn is cut off here."""


class Gateway:
    """Serves Socket.IO on aiohttp; one audio buffer per connected device."""

    def __init__(self, redis_url: str, *, on_event: Optional[Callable[[Event], None]] = None) -> None:
        # Imported here: python-socketio, aiohttp and redis are the demo-socketio extra, needed by this stack only.
        socketio: Any = importlib.import_module("socketio")
        self._socketio = socketio
        self._redis: Any = importlib.import_module("redis.asyncio").Redis.from_url(redis_url)
        self.hop = AsyncRedisHop(self._redis)
        self.sio = socketio.AsyncServer(async_mode="aiohttp", client_manager=socketio.AsyncRedisManager(redis_url))
        self._buffers: dict[str, bytearray] = {}
        self._conversations: dict[str, str] = {}
        self._on_event = on_event or (lambda event: None)
        self.sio.on("connect", self.connect)
        self.sio.on("disconnect", self.disconnect)
        self.sio.on(protocol.AUDIO, self.audio)
        self.sio.on(protocol.END_OF_TURN, self.end_of_turn)

    async def serve_until(
        self, host: str, port: int, stop: Awaitable[object], on_listening: Callable[[int], None]
    ) -> None:
        """Listen on ``host:port`` (0: any free port) until ``stop`` completes."""
        web: Any = importlib.import_module("aiohttp.web")
        app = web.Application()
        self.sio.attach(app)
        runner = web.AppRunner(app, handle_signals=False)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
            on_listening(int(runner.addresses[0][1]))
            await stop
        finally:
            await runner.cleanup()
            await self._redis.aclose()

    async def connect(self, sid: str, environ: dict[str, Any], auth: object) -> None:
        try:
            fmt, conversation = protocol.parse_auth(auth)
        except ValueError:
            fmt, conversation = None, ""
        if fmt != protocol.AudioFormat():
            raise self._socketio.exceptions.ConnectionRefusedError("expected linear16 audio, 16000 Hz, mono")
        self._buffers[sid] = bytearray()
        self._conversations[sid] = conversation

    async def disconnect(self, sid: str, *reason: object) -> None:
        self._buffers.pop(sid, None)
        self._conversations.pop(sid, None)

    async def audio(self, sid: str, frame: object) -> None:
        buffer = self._buffers.get(sid)
        if buffer is None or not isinstance(frame, bytes):
            return
        if len(buffer) + len(frame) > MAX_UTTERANCE_SECONDS * audio.SAMPLE_RATE * audio.SAMPLE_WIDTH:
            await self.sio.disconnect(sid)
            return
        buffer += frame

    async def end_of_turn(self, sid: str, turn: object) -> None:
        buffer = self._buffers.get(sid)
        if buffer is None or not isinstance(turn, int):
            return
        pcm = bytes(buffer)
        buffer.clear()
        fields = {"sid": sid, "conversation": self._conversations.get(sid, ""), "turn": turn, "audio": pcm}
        await self.hop.xadd(protocol.UTTERANCES, fields)
        self._on_event({"event": "queued", "turn": turn, "audio_seconds": audio.duration(pcm)})
