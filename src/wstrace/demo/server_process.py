"""The server's process, ``voice-server``: started by :mod:`wstrace.demo.run` as a child in a session of its own.

Talks to its parent through pipes: stdout carries JSON lines (``listening`` with the port, then one event per
finished stage), and the end of stdin means "stop". Its spans go to the same trace file as the device's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any, Optional, Sequence

from opentelemetry import trace

from wstrace.demo import engines, telemetry
from wstrace.demo.profile import PROFILES, Pacing
from wstrace.demo.server import VoiceAssistant


__all__ = ["add_server_arguments", "build_engines", "main", "voice_assistant"]

_emit_lock = threading.Lock()


def emit(event: dict[str, Any]) -> None:
    """One JSON line to the parent; called from the event loop and the ASR thread."""
    line = json.dumps(event) + "\n"
    with _emit_lock:
        try:
            sys.stdout.write(line)
            sys.stdout.flush()
        except (OSError, ValueError):  # the parent is gone: nobody to tell
            pass


def build_engines(
    pacing: Pacing, *, real_audio: bool, llm_url: Optional[str], llm_model: str
) -> tuple[engines.ASR, engines.LLM, engines.TTS]:
    """The engines the options ask for; raises ``ImportError`` when an optional one is not installed."""
    asr: engines.ASR = engines.PocketsphinxASR() if real_audio else engines.SimulatedASR(pacing)
    tts: engines.TTS = engines.EspeakTTS() if real_audio else engines.SimulatedTTS(pacing)
    llm: engines.LLM = engines.OpenAICompatibleLLM(llm_url, llm_model) if llm_url else engines.SimulatedLLM(pacing)
    return asr, llm, tts


def voice_assistant(args: argparse.Namespace, llm_client_spans: bool) -> Optional[VoiceAssistant]:
    """The assistant the options (:func:`add_server_arguments`) ask for; ``None``, with the parent told, when an
    optional engine is not installed."""
    pacing = Pacing(PROFILES[args.profile], args.seed, args.speed)
    try:
        asr, llm, tts = build_engines(
            pacing, real_audio=args.real_audio, llm_url=args.llm_url, llm_model=args.llm_model
        )
    except ImportError as exc:
        emit({"event": "failed", "error": f"{exc.name or exc} is not installed"})
        return None
    return VoiceAssistant(asr, llm, tts, on_event=emit, llm_client_spans=llm_client_spans)


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every server process of the demo takes (this one's, and the Socket.IO stack's two)."""
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", default="message")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--speed", type=float, default=1.0)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="tuned")
    parser.add_argument("--real-audio", action="store_true")
    parser.add_argument("--llm-url")
    parser.add_argument("--llm-model", default="gpt-4o-mini")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m wstrace.demo.server_process")
    add_server_arguments(parser)
    parser.add_argument("--envelope", default="negotiate")
    return parser


async def _serve(assistant: VoiceAssistant, host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    await assistant.serve_until(
        host,
        port,
        stdin.read(),  # until the parent closes the pipe
        lambda bound: emit({"event": "listening", "port": bound, "pid": os.getpid()}),
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="voice-server: %(levelname)s %(message)s")
    tel = telemetry.start(
        "voice-server", Path(args.out), model=args.model, envelope=args.envelope, instrument_openai=bool(args.llm_url)
    )
    # The application uses the global provider, as applications do (trace.get_tracer, wstrace.stream).
    trace.set_tracer_provider(tel.provider)
    try:
        assistant = voice_assistant(args, tel.llm_client_spans)
        if assistant is None:
            return 1
        asyncio.run(_serve(assistant, args.host, args.port))
    except KeyboardInterrupt:  # run by hand and interrupted: stop quietly, keep the spans
        return 130
    finally:
        tel.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
