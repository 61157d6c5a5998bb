"""The Socket.IO stack's two server processes, ``voice-gateway`` and ``voice-assistant``: started by
:mod:`wstrace.demo.run` as children in sessions of their own, as ``python -m wstrace.demo.socketio_process ROLE``.

Each talks to its parent as :mod:`.server_process` does: JSON lines on stdout (``listening`` with the port for the
gateway, ``ready`` for the assistant, then its events), and the end of stdin means "stop". Both reach the private
redis-server the parent started (``--redis-url``) and write their spans to the same trace file as the device's.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Optional

from opentelemetry import trace

from wstrace.demo import telemetry
from wstrace.demo.assistant import RedisAssistant
from wstrace.demo.gateway import Gateway
from wstrace.demo.server_process import add_server_arguments, emit, voice_assistant


__all__ = ["SERVICES", "main"]

SERVICES = {"gateway": "voice-gateway", "assistant": "voice-assistant"}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m wstrace.demo.socketio_process")
    parser.add_argument("role", choices=sorted(SERVICES))
    parser.add_argument("--redis-url", required=True)
    add_server_arguments(parser)
    return parser


async def _until_stdin_closes(serve: Callable[[Awaitable[bytes]], Awaitable[None]]) -> None:
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    await serve(stdin.read())  # until the parent closes the pipe


def _gateway(args: argparse.Namespace) -> int:
    gateway = Gateway(args.redis_url, on_event=emit)
    asyncio.run(
        _until_stdin_closes(
            lambda stop: gateway.serve_until(
                args.host, args.port, stop, lambda port: emit({"event": "listening", "port": port, "pid": os.getpid()})
            )
        )
    )
    return 0


def _assistant(args: argparse.Namespace, llm_client_spans: bool) -> int:
    voice = voice_assistant(args, llm_client_spans)
    if voice is None:
        return 1
    assistant = RedisAssistant(voice, args.redis_url)
    asyncio.run(
        _until_stdin_closes(
            lambda stop: assistant.serve_until(stop, lambda: emit({"event": "ready", "pid": os.getpid()}))
        )
    )
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    service = SERVICES[args.role]
    logging.basicConfig(level=logging.WARNING, format=f"{service}: %(levelname)s %(message)s")
    tel = telemetry.start(
        service,
        Path(args.out),
        model=args.model,
        envelope="off",
        stack="socketio",
        instrument_openai=args.role == "assistant" and bool(args.llm_url),
    )
    # The application uses the global provider, as applications do (trace.get_tracer, wstrace.stream, the hop).
    trace.set_tracer_provider(tel.provider)
    try:
        return _gateway(args) if args.role == "gateway" else _assistant(args, tel.llm_client_spans)
    except KeyboardInterrupt:  # run by hand and interrupted: stop quietly, keep the spans
        return 130
    finally:
        tel.shutdown()


if __name__ == "__main__":
    raise SystemExit(main())
