"""The Socket.IO stack's assistant (``--stack socketio``): a worker process that answers the utterances the gateway
adds to Redis, written as a user would.

Consumers in the ``assistants`` group read the Redis stream ``voice:utterances`` (``XREADGROUP``); each entry is
one turn, answered by the same pipeline as the WebSocket server's, :meth:`.VoiceAssistant.respond` (ASR in a
thread pool, the LLM's tokens, the TTS's audio as it is synthesized), then acknowledged. The answer goes to the
device's sid through a write-only ``socketio.AsyncRedisManager``: this process has no Socket.IO server and no
connection to the device; the gateway's manager delivers the events.

A Socket.IO emit from here costs a Redis publish and, in the gateway, a delivery (each its own span), so the
reply audio goes in packets of about a second (:data:`PACKET_MS`), the first 40 ms chunk at once: the device
hears the reply start as soon as it would over a WebSocket, and a turn stays a few dozen spans.

Tracing here is what an application writes: ``wstrace.redis.AsyncRedisHop`` reads the entries with their
context and ``wstrace.restore`` handles each in a ``process voice:utterances`` span, the child of the gateway's
``xadd``; ``SocketioInstrumentor`` traces the manager's emits; the pipeline's own spans are the server's.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
from collections.abc import Awaitable
from typing import Any, Callable

import wstrace
from wstrace.demo import audio, protocol
from wstrace.demo.server import Turn, VoiceAssistant
from wstrace.redis import AsyncRedisHop


__all__ = ["GROUP", "PACKET_MS", "RedisAssistant", "SocketioReplies"]

_log = logging.getLogger(__name__)

GROUP = "assistants"
PACKET_MS = 1000
"""Reply audio per ``reply.audio`` event after the first chunk, in milliseconds."""
_PACKET_BYTES = audio.SAMPLE_RATE * audio.SAMPLE_WIDTH * PACKET_MS // 1000


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class SocketioReplies:
    """A turn's answer as Socket.IO events to the device's sid, through the write-only manager."""

    def __init__(self, manager: Any, sid: str, turn: int) -> None:
        self.manager, self.sid, self.turn = manager, sid, turn
        self._pending = bytearray()
        self._sent = False

    async def audio(self, chunk: bytes) -> None:
        self._pending += chunk
        if not self._sent or len(self._pending) >= _PACKET_BYTES:
            await self._flush()

    async def done(self, done: protocol.ReplyDone) -> None:
        await self._flush()
        await self.manager.emit(protocol.REPLY_DONE, protocol.reply_done_fields(done), to=self.sid)

    async def _flush(self) -> None:
        if self._pending:
            packet = protocol.audio_packet(self.turn, bytes(self._pending))
            self._pending.clear()
            self._sent = True
            await self.manager.emit(protocol.REPLY_AUDIO, packet, to=self.sid)


class RedisAssistant:
    """Answers the utterances of ``voice:utterances`` with ``assistant``'s pipeline; ``consumers`` turns at once."""

    def __init__(
        self,
        assistant: VoiceAssistant,
        redis_url: str,
        *,
        consumers: int = 2,
    ) -> None:
        # Imported here: python-socketio and redis are the demo-socketio extra, needed by this stack only.
        socketio: Any = importlib.import_module("socketio")
        self.assistant = assistant
        self.manager = socketio.AsyncRedisManager(redis_url, write_only=True)
        self._redis: Any = importlib.import_module("redis.asyncio").Redis.from_url(redis_url)
        self.hop = AsyncRedisHop(self._redis)
        self._consumers = consumers

    async def serve_until(self, stop: Awaitable[object], on_ready: Callable[[], None]) -> None:
        """Answer utterances until ``stop`` completes."""
        redis_errors: Any = importlib.import_module("redis.exceptions")
        try:
            await self._redis.xgroup_create(protocol.UTTERANCES, GROUP, id="0", mkstream=True)
        except redis_errors.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):  # another assistant made it first: fine
                raise
        consumers = [asyncio.create_task(self._consume(f"{os.getpid()}-{n}")) for n in range(self._consumers)]
        try:
            on_ready()
            await stop
        finally:
            for consumer in consumers:
                consumer.cancel()
            await asyncio.gather(*consumers, return_exceptions=True)
            self.assistant.asr_pool.shutdown(wait=True)
            await self._redis.aclose()

    async def _consume(self, name: str) -> None:
        try:
            while True:
                # Block a second at most per read, so that a cancelled consumer is not left waiting on Redis.
                entries = await self.hop.xreadgroup(GROUP, name, {protocol.UTTERANCES: ">"}, count=1, block=1000)
                for carried in entries:
                    with wstrace.restore(carried) as entry:
                        await self._answer(entry.fields)
                    await self._redis.xack(protocol.UTTERANCES, GROUP, entry.id)
        except Exception:  # Redis went away: say so, or the device would wait for an answer in silence
            _log.exception("consumer %s stopped", name)
            raise

    async def _answer(self, fields: Any) -> None:
        try:
            sid = _text(fields[b"sid"])
            turn = Turn(
                SocketioReplies(self.manager, sid, int(fields[b"turn"])),
                _text(fields[b"conversation"]),
                int(fields[b"turn"]),
                bytes(fields[b"audio"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            _log.warning("a malformed utterance was skipped: %s", exc)
            return
        try:
            await self.assistant.respond(turn)
        except Exception:
            _log.exception("turn %d failed", turn.number)
