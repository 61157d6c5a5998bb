"""The assistant's engines: speech recognition, language model, speech synthesis; simulated or real.

Simulated engines (the default) keep the timing of real ones: seeded latencies from :mod:`.profile`, real PCM
out of the synthesizer. Real ones: pocketsphinx (its wheel ships an English model) for ASR, espeak-ng for TTS,
and any OpenAI-compatible streaming endpoint for the LLM, through the ``openai`` SDK.

Engines know nothing of tracing: the server wraps each call in a ``wstrace.stream``.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import re
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any, Protocol

from wstrace.demo import audio, dialogue
from wstrace.demo.profile import Pacing


__all__ = [
    "ASR",
    "LLM",
    "TTS",
    "EspeakTTS",
    "OpenAICompatibleLLM",
    "PocketsphinxASR",
    "SimulatedASR",
    "SimulatedLLM",
    "SimulatedTTS",
    "Message",
]

Message = dict[str, str]
"""A chat message, ``{"role": ..., "content": ...}``."""

SYSTEM_PROMPT = (
    "You are a voice assistant. Answer in one or two short spoken sentences: plain words, no lists, no markdown."
)


class ASR(Protocol):
    provider: str
    model: str

    def transcribe(self, pcm: bytes, turn: int) -> Iterator[str]:
        """The words heard in ``pcm``; blocking (CPU-bound), so the server runs it in a thread pool."""
        ...


class LLM(Protocol):
    provider: str
    model: str

    def stream(self, history: list[Message], turn: int) -> AsyncIterator[str]:
        """The reply to the conversation so far, token by token."""
        ...


class TTS(Protocol):
    provider: str
    model: str

    def synthesize(self, text: str, turn: int, sentence: int) -> AsyncIterator[bytes]:
        """``text`` as 16 kHz PCM chunks of 40 ms, as soon as each is ready."""
        ...


# ---------------------------------------------------------------------------------------------------------
# Simulated


class SimulatedASR:
    """Recognises the scripted line of the turn, after the profile's finalisation delay."""

    provider = "simulated"
    model = "sim-asr"

    def __init__(self, pacing: Pacing) -> None:
        self.pacing = pacing

    def transcribe(self, pcm: bytes, turn: int) -> Iterator[str]:
        if not pcm:
            return
        time.sleep(self.pacing.draw(self.pacing.profile.asr_final, self.pacing.rng(turn, "asr")))
        yield from re.findall(r"[\w']+", dialogue.utterance(self.pacing.seed, turn).lower())


class SimulatedLLM:
    """Answers by keyword (:func:`dialogue.reply`), streaming tokens at the profile's TTFT and cadence."""

    provider = "simulated"
    model = "sim-llm"

    def __init__(self, pacing: Pacing) -> None:
        self.pacing = pacing

    async def stream(self, history: list[Message], turn: int) -> AsyncIterator[str]:
        pacing = self.pacing
        rng = pacing.rng(turn, "llm")
        transcript = next((m["content"] for m in reversed(history) if m["role"] == "user"), "")
        await asyncio.sleep(pacing.draw(pacing.profile.llm_ttft, rng))
        for index, token in enumerate(dialogue.tokens(dialogue.reply(transcript, pacing.seed, turn))):
            if index:
                await asyncio.sleep(pacing.draw(pacing.profile.llm_token, rng))
            yield token


class SimulatedTTS:
    """Speech-like audio for the text: first chunk after the profile's TTFB, then faster than real time."""

    provider = "simulated"
    model = "sim-tts"

    def __init__(self, pacing: Pacing) -> None:
        self.pacing = pacing

    async def synthesize(self, text: str, turn: int, sentence: int) -> AsyncIterator[bytes]:
        pacing = self.pacing
        started = time.monotonic()
        # Rendering is real work: keep it off the event loop, and count it in the TTFB.
        pcm = await asyncio.to_thread(audio.speech, text, f"{pacing.seed}:{turn}:{sentence}:assistant")
        ttfb = pacing.draw(pacing.profile.tts_ttfb, pacing.rng(turn, f"tts{sentence}"))
        await asyncio.sleep(max(0.0, ttfb - (time.monotonic() - started)))
        gap = pacing.scale(audio.REPLY_CHUNK_MS / 1000 * pacing.profile.tts_realtime_factor)
        for index, chunk in enumerate(audio.chunks(pcm, audio.REPLY_CHUNK_BYTES)):
            if index:
                await asyncio.sleep(gap)
            yield chunk


# ---------------------------------------------------------------------------------------------------------
# Real


class PocketsphinxASR:
    """CMU PocketSphinx with the English model its wheel ships; loads once (about 0.3 s)."""

    provider = "pocketsphinx"
    model = "pocketsphinx-en-us"

    def __init__(self) -> None:
        pocketsphinx: Any = importlib.import_module("pocketsphinx")
        self._decoder = pocketsphinx.Decoder(samprate=audio.SAMPLE_RATE)

    def transcribe(self, pcm: bytes, turn: int) -> Iterator[str]:
        decoder = self._decoder  # not thread-safe: the server's ASR pool has one thread
        decoder.start_utt()
        decoder.process_raw(pcm, full_utt=True)
        decoder.end_utt()
        for segment in decoder.seg():
            word = re.sub(r"\(\d+\)$", "", segment.word)  # "the(2)": an alternate pronunciation
            if word and not word.startswith(("<", "[")):
                yield word


class OpenAICompatibleLLM:
    """Any OpenAI-compatible ``/chat/completions`` endpoint, streamed (vLLM, llama.cpp, Ollama, OpenAI)."""

    provider = "openai"

    def __init__(self, base_url: str, model: str) -> None:
        openai: Any = importlib.import_module("openai")
        self.model = model
        self._client = openai.AsyncOpenAI(
            base_url=base_url,
            api_key=os.environ.get("OPENAI_API_KEY") or "not-needed",  # local servers ignore it
            timeout=30.0,
            max_retries=0,
        )

    async def stream(self, history: list[Message], turn: int) -> AsyncIterator[str]:
        response = await self._client.chat.completions.create(
            model=self.model,
            messages=[{"role": "system", "content": SYSTEM_PROMPT}, *history],
            stream=True,
            max_tokens=120,
        )
        async for chunk in response:
            if chunk.choices and chunk.choices[0].delta.content:
                yield chunk.choices[0].delta.content


class EspeakTTS:
    """espeak-ng: synthesis is far faster than real time, so its chunks follow each other at once."""

    provider = "espeak-ng"
    model = "espeak-ng-en-us"

    async def synthesize(self, text: str, turn: int, sentence: int) -> AsyncIterator[bytes]:
        for chunk in audio.chunks(await audio.espeak(text), audio.REPLY_CHUNK_BYTES):
            yield chunk
