"""The voice assistant's server: a websockets application, ASR → LLM → TTS, written as a user would.

The connection handler only buffers the user's audio. When the device ends a turn, the handler puts the turn
on a queue and goes back to receiving; worker tasks, started with the server, take turns off the queue and
answer them:

1. ``speech_to_text``: the ASR engine runs in a thread pool (it is CPU-bound);
2. ``chat``: the LLM streams tokens in a task of its own; each complete sentence goes to the TTS at once;
3. ``text_to_speech``: audio chunks are sent to the device as they are synthesized; ``reply.done`` ends the
   turn.

Tracing here is what an application writes on top of the instrumentors: the queue is a
``wstrace.TracedAsyncQueue`` and the pool a ``wstrace.TracedThreadPoolExecutor`` (drop-in replacements that
carry the trace context across), each stage is a ``wstrace.stream`` (time to first chunk, chunk gaps) named
after the GenAI operation, and the turn is an ``invoke_agent`` span. When the LLM's client makes its own GenAI
span (the OpenAI SDK, instrumented by opentelemetry-instrumentation-openai-v2), that span is the stage's
``chat <model>``: the stream is then ``chat <model> stream``, an internal span around it that measures what the
pipeline saw, and the SDK's span (and its HTTP request's) nest under it. The WebSocket spans come from
``WebsocketsInstrumentor``: the reply's audio is sent while the ``end_of_turn`` message's context is current,
so it forms that message's outbound stream.

A turn answers through its :class:`Replies`: here the connection itself (:class:`WebSocketReplies`); the
Socket.IO stack's assistant (:mod:`.assistant`) runs the same pipeline, :meth:`VoiceAssistant.respond`, and
answers through the Redis manager instead.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol

from opentelemetry import trace
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

import wstrace
from wstrace import TracedAsyncQueue, TracedThreadPoolExecutor
from wstrace.demo import audio, protocol
from wstrace.demo.engines import ASR, LLM, TTS, Message


__all__ = ["Replies", "Turn", "VoiceAssistant", "WebSocketReplies"]

_log = logging.getLogger(__name__)
_tracer = trace.get_tracer("wstrace.demo.server")

STAGE = "wstrace.voice.stage"
"""On each stage's stream span: ``speech_to_text``, ``chat`` or ``text_to_speech``."""

_SENTENCE_END = re.compile(r"[.!?]\s*$")
_HISTORY = 12  # messages of context the LLM gets

Event = dict[str, Any]


def _stage_attributes(engine: ASR | LLM | TTS, stage: str) -> dict[str, Any]:
    """A stage's stream span attributes: the GenAI model and provider of its engine, and the stage."""
    return {"gen_ai.request.model": engine.model, "gen_ai.provider.name": engine.provider, STAGE: stage}


class Replies(Protocol):
    """Where a turn's answer goes: its audio as it is synthesized, then ``reply.done``."""

    async def audio(self, chunk: bytes) -> None: ...

    async def done(self, done: protocol.ReplyDone) -> None: ...


class WebSocketReplies:
    """A turn's answer on the device's connection: binary audio messages, then ``reply.done`` as text."""

    def __init__(self, ws: ServerConnection) -> None:
        self.ws = ws

    async def audio(self, chunk: bytes) -> None:
        await self.ws.send(chunk)

    async def done(self, done: protocol.ReplyDone) -> None:
        await self.ws.send(protocol.reply_done(done))


@dataclass(frozen=True)
class Turn:
    """A user's turn, from the handler to a worker."""

    reply: Replies
    conversation: str
    number: int
    audio: bytes


class VoiceAssistant:
    """Serves ``/voice``: one handler per connection, a queue of turns, workers that answer them."""

    def __init__(
        self,
        asr: ASR,
        llm: LLM,
        tts: TTS,
        *,
        on_event: Optional[Callable[[Event], None]] = None,
        workers: int = 2,
        llm_client_spans: bool = False,
    ) -> None:
        """``llm_client_spans``: the LLM's client makes its own GenAI ``chat`` span (an instrumented SDK)."""
        self.asr, self.llm, self.tts = asr, llm, tts
        self._llm_client_spans = llm_client_spans
        self.turns: TracedAsyncQueue[Turn] = TracedAsyncQueue(name="turns")
        # One ASR thread: decoders are heavy and seldom thread-safe.
        self.asr_pool = TracedThreadPoolExecutor(max_workers=1, thread_name_prefix="asr")
        self._workers = workers
        self._histories: dict[str, list[Message]] = {}
        self._on_event = on_event or (lambda event: None)

    async def serve_until(
        self, host: str, port: int, stop: Awaitable[object], on_listening: Callable[[int], None]
    ) -> None:
        """Listen on ``host:port`` (0: any free port) until ``stop`` completes."""
        workers = [asyncio.create_task(self._work()) for _ in range(self._workers)]
        try:
            async with serve(self.handler, host, port) as server:
                on_listening(int(server.sockets[0].getsockname()[1]))
                await stop
        finally:
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            self.asr_pool.shutdown(wait=True)

    async def handler(self, ws: ServerConnection) -> None:
        """Buffer a turn's audio frames; queue the turn when the device says the user is done."""
        try:
            fmt, conversation = protocol.parse_query(ws.request.path if ws.request else "")
        except ValueError:
            fmt, conversation = None, ""
        if fmt != protocol.AudioFormat():
            await ws.close(1003, "expected linear16 audio, 16000 Hz, mono")
            return
        buffer = bytearray()
        try:
            async for message in ws:
                if isinstance(message, bytes):
                    buffer += message
                    continue
                control = protocol.parse_control(message)
                if isinstance(control, protocol.EndOfTurn):
                    await self.turns.put(Turn(WebSocketReplies(ws), conversation, control.turn, bytes(buffer)))
                    buffer.clear()
        except ConnectionClosed:
            # The device left without a clean close (Ctrl-C, a dropped network): nothing is left to do,
            # and its close span records how it ended. Let out, websockets would log a traceback.
            _log.info("the device left: %s", ws.close_reason or "no close frame")

    async def _work(self) -> None:
        while True:
            turn = await self.turns.get()
            try:
                await self.respond(turn)
            except ConnectionClosed:
                _log.info("turn %d: the device left before the reply was sent", turn.number)
            except Exception:
                _log.exception("turn %d failed", turn.number)
            finally:
                self.turns.task_done()

    async def respond(self, turn: Turn) -> None:
        """Answer one turn: the pipeline in an ``invoke_agent`` span, then ``reply.done`` (with the error, if the
        pipeline failed: the device must still hear back)."""
        try:
            with _tracer.start_as_current_span(
                "invoke_agent voice-assistant",
                attributes={
                    "gen_ai.operation.name": "invoke_agent",
                    "gen_ai.agent.name": "voice-assistant",
                    "gen_ai.conversation.id": turn.conversation,
                    "wstrace.voice.turn.number": turn.number,
                },
            ):
                done = await self._pipeline(turn)
        except ConnectionClosed:
            raise  # nobody to answer
        except Exception as exc:  # the span has recorded it; the device must still hear back
            _log.info("turn %d failed: %s", turn.number, exc)
            done = protocol.ReplyDone(turn.number, error=f"{type(exc).__name__}: {exc}")
            self._on_event({"event": "error", "turn": turn.number, "error": done.error})
        await turn.reply.done(done)

    async def _pipeline(self, turn: Turn) -> protocol.ReplyDone:
        loop = asyncio.get_running_loop()
        transcript = await loop.run_in_executor(self.asr_pool, self._transcribe, turn)
        history = self._histories.setdefault(turn.conversation, [])
        history.append({"role": "user", "content": transcript})
        sentences: asyncio.Queue[Optional[str]] = asyncio.Queue()
        thinking = asyncio.create_task(self._think(turn, history[-_HISTORY:], sentences))
        try:
            audio_ms = await self._speak(turn, sentences)
        except BaseException:
            thinking.cancel()
            raise
        reply = await thinking
        history.append({"role": "assistant", "content": reply})
        return protocol.ReplyDone(turn.number, transcript=transcript, reply=reply, audio_ms=audio_ms)

    def _transcribe(self, turn: Turn) -> str:
        """Runs in the ASR pool thread."""
        with wstrace.stream(
            f"speech_to_text {self.asr.model}",
            gen_ai_operation="speech_to_text",
            attributes=_stage_attributes(self.asr, "speech_to_text"),
        ) as words:
            heard = []
            for word in self.asr.transcribe(turn.audio, turn.number):
                words.chunk(len(word))
                heard.append(word)
        transcript = " ".join(heard)
        self._on_event(
            {
                "event": "speech_to_text",
                "turn": turn.number,
                "seconds": words.stats.time_to_last_chunk,
                "audio_seconds": audio.duration(turn.audio),
                "transcript": transcript,
            }
        )
        return transcript

    async def _think(self, turn: Turn, history: list[Message], sentences: asyncio.Queue[Optional[str]]) -> str:
        """Stream the LLM's reply, handing each finished sentence to the TTS."""
        text: list[str] = []
        pending = ""
        if self._llm_client_spans:
            # The SDK's span is the GenAI chat span; this one only measures the stream, so it claims no operation.
            name, operation, attributes = f"chat {self.llm.model} stream", None, {STAGE: "chat"}
        else:
            name, operation = f"chat {self.llm.model}", "chat"
            attributes = _stage_attributes(self.llm, "chat")
        try:
            with (
                wstrace.stream(name, gen_ai_operation=operation, attributes=attributes) as tokens,
                # Current while the client runs, so that its spans (the SDK's, the HTTP request's) nest under it.
                trace.use_span(tokens.span, record_exception=False, set_status_on_exception=False),
            ):
                async for token in self.llm.stream(history, turn.number):
                    tokens.chunk(len(token.encode("utf-8")))
                    if not text:
                        self._on_event({"event": "chat", "turn": turn.number, "ttft": tokens.stats.time_to_first_chunk})
                    text.append(token)
                    pending += token
                    if _SENTENCE_END.search(pending) and len(pending.split()) >= 3:
                        sentences.put_nowait(pending.strip())
                        pending = ""
        finally:
            if pending.strip():
                sentences.put_nowait(pending.strip())
            sentences.put_nowait(None)
        return "".join(text).strip()

    async def _speak(self, turn: Turn, sentences: asyncio.Queue[Optional[str]]) -> float:
        """Synthesize sentences as they come and send the audio; returns the milliseconds of audio sent."""
        text = await sentences.get()
        if text is None:
            return 0.0
        sent = 0
        with wstrace.stream(
            f"text_to_speech {self.tts.model}",
            gen_ai_operation="text_to_speech",
            attributes=_stage_attributes(self.tts, "text_to_speech"),
        ) as speech:
            index = 0
            while text is not None:
                async for chunk in self.tts.synthesize(text, turn.number, index):
                    speech.chunk(len(chunk))
                    if not sent:
                        self._on_event(
                            {"event": "text_to_speech", "turn": turn.number, "ttfb": speech.stats.time_to_first_chunk}
                        )
                    await turn.reply.audio(chunk)
                    sent += len(chunk)
                index += 1
                text = await sentences.get()
        return 1000 * sent / (audio.SAMPLE_RATE * 2)
