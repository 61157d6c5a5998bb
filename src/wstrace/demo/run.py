"""``wstrace demo``: runs the voice assistant end to end, then shows its trace and latencies.

Process layout: this process is the device (``service.name`` ``voice-device``); the server runs as a child
process (``voice-server``, :mod:`.server_process`) in a session of its own, so a Ctrl-C in the terminal reaches
the device only, which then stops the server by closing its stdin: the server ends its turn's spans and
flushes them instead of dying mid-turn with a traceback, and the demo exits quietly with status 130. Two
processes, because the instrumentor is a process-wide singleton bound to one tracer provider, so one process
cannot give the two ends different resources; and because that is what a device and a server are. Both
append whole lines to one OTLP/JSON file (:mod:`.telemetry`).

After the conversation this module reads the file back, the way any consumer of the trace would: the
waterfall comes from ``wstrace view``'s renderer, folded as ``wstrace view FILE`` folds it (a long run of
identical sibling spans shows as its first, a summary row and its last; here, a long run of identical traces
too, such as the one-span traces of the uplink frames with ``--envelope off``; ``wstrace view FILE --no-fold``
shows every span), and the latency table from the spans' attributes.

With ``--stack socketio`` the same conversation runs over Socket.IO, and its server is two processes behind a
private redis-server (started here on a free loopback port, stopped last): the gateway (``voice-gateway``,
:mod:`.gateway`), a python-socketio server the device connects to, and the assistant (``voice-assistant``,
:mod:`.assistant`), which takes each utterance off a Redis stream and answers through a write-only Redis manager
that the gateway's manager delivers from. Both are children as the server is (:mod:`.socketio_process`), stopped
the same way; one trace per turn runs device → gateway → Redis → assistant → Redis → gateway → device.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import shlex
import shutil
import statistics
import sys
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from rich.console import Console
from rich.table import Table
from rich.text import Text
from websockets.exceptions import ConnectionClosed

from wstrace.cli.export import SpanRecord, read_spans
from wstrace.cli.fold import FOLD_MIN, fold, runs, service
from wstrace.cli.view import Omitted, Trace, build_traces, render_terminal, services_of
from wstrace.demo import audio, dialogue, protocol, redis_server, telemetry
from wstrace.demo.device import LATENCY, Device, SocketioDevice, TurnResult
from wstrace.demo.profile import PROFILES, Pacing
from wstrace.demo.server import STAGE


__all__ = ["DEFAULT_OUT", "STACKS", "Options", "TurnLatency", "latencies", "missing_requirements", "run"]

DEFAULT_OUT = Path("wstrace-traces.jsonl")
NUMBER = "wstrace.voice.turn.number"
STACKS = ("websockets", "socketio")
ASSISTANTS = ("voice-server", "voice-assistant")
"""The services that run the pipeline: the WebSocket stack's server, the Socket.IO stack's assistant."""


class DemoError(Exception):
    """The demo could not run; the message says why."""


@dataclass(frozen=True)
class Options:
    """What ``wstrace demo`` was asked to do."""

    turns: int = 3
    model: str = "message"
    envelope: str = "negotiate"
    seed: int = 1
    out: Path = DEFAULT_OUT
    speed: float = 1.0
    profile: str = "tuned"
    real_audio: bool = False
    llm_url: Optional[str] = None
    llm_model: str = "gpt-4o-mini"
    html: Optional[Path] = None
    waterfall: bool = True
    stack: str = "websockets"


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package that is not there, or a blocked module
        return False


def missing_requirements(options: Options) -> list[str]:
    """What the chosen modes need and is not installed, one line each, with how to get it."""
    missing = []
    if options.real_audio:
        if audio.espeak_path() is None:
            missing.append("--real-audio needs espeak-ng: apt-get install espeak-ng (macOS: brew install espeak-ng)")
        if not _installed("pocketsphinx"):
            missing.append("--real-audio needs pocketsphinx: pip install 'wstrace[demo-audio]'")
    if options.llm_url and not _installed("openai"):
        missing.append("--llm-url needs the openai SDK: pip install 'wstrace[demo-llm]'")
    if options.stack == "socketio":
        if redis_server.executable() is None:
            missing.append(f"--stack socketio needs redis-server on PATH: {redis_server.INSTALL}")
        absent = [name for name, module in SOCKETIO_MODULES if not _installed(module)]
        if absent:
            missing.append(f"--stack socketio needs {', '.join(absent)}: pip install 'wstrace[demo-socketio]'")
    return missing


SOCKETIO_MODULES = (("python-socketio", "socketio"), ("aiohttp", "aiohttp"), ("redis", "redis"))


# ---------------------------------------------------------------------------------------------------------
# Progress


def _ms(seconds: Optional[float]) -> str:
    return "-" if seconds is None else f"{seconds * 1000:,.0f}"


class Progress:
    """One line per stage of each turn, from both processes, as they happen."""

    DEVICE = ("device", "cyan")
    SERVER = ("server", "magenta")
    GATEWAY = ("gateway", "blue")
    ASSISTANT = ("assistant", "magenta")

    def __init__(self, console: Console, width: int = 7) -> None:
        self.console = console
        self.width = width  # of the process column: the longest name of the stack's processes

    def note(self, message: str) -> None:
        self.console.print(Text(message, style="dim"))

    def _line(self, turn: Any, who: tuple[str, str], *parts: Any) -> None:
        head = Text.assemble((f"turn {turn:<3}", "bold"), " ", (who[0].ljust(self.width), who[1]), " ")
        self.console.print(Text.assemble(head, *parts), overflow="fold")

    def device(self, event: dict[str, Any]) -> None:
        # The server's lines come through a pipe: hold the device's back a little to keep cause before effect.
        asyncio.get_running_loop().call_later(0.01, self._device, event)

    def _device(self, event: dict[str, Any]) -> None:
        kind, turn = event.get("event"), event.get("turn", "")
        if kind == "connected":
            self.note(f"device  connected to {str(event['url']).partition('?')[0]}  (service voice-device)")
        elif kind == "speaking":
            self._line(
                turn,
                self.DEVICE,
                ("▶ ", "bold green"),
                (f"“{event['utterance']}”", "green"),
                (
                    f"  {event['speech_seconds']:.2f} s of speech + {event['silence_seconds'] * 1000:.0f} ms of "
                    f"silence, {event['frames']} frames of 20 ms",
                    "dim",
                ),
            )
        elif kind == "first_audio":
            self._line(
                turn,
                self.DEVICE,
                ("◀ first reply audio", "bold yellow"),
                f"  voice-to-voice {_ms(event['latency'])} ms",
            )
        elif kind == "heard":
            if event.get("error"):
                self._line(turn, self.DEVICE, ("✗ ", "bold red"), (event["error"], "red"))
            else:
                self._line(
                    turn,
                    self.DEVICE,
                    ("◀ ", "bold yellow"),
                    (f"“{event['reply']}”", "yellow"),
                    (f"  {event['reply_audio']:.2f} s of audio", "dim"),
                )

    def server(self, event: dict[str, Any], who: Optional[tuple[str, str]] = None) -> None:
        kind, turn = event.get("event"), event.get("turn", "")
        who = who or self.SERVER
        if kind == "queued":
            self._line(
                turn,
                who,
                (f"→ {protocol.UTTERANCES}  ", "bold"),
                (f"{event['audio_seconds']:.2f} s of audio, for the assistant", "dim"),
            )
        elif kind == "speech_to_text":
            self._line(
                turn,
                who,
                ("speech_to_text  ", "bold"),
                f"{_ms(event['seconds'])} ms  ",
                (f"“{event['transcript']}”", "italic"),
            )
        elif kind == "chat":
            self._line(turn, who, ("chat            ", "bold"), f"first token after {_ms(event['ttft'])} ms")
        elif kind == "text_to_speech":
            self._line(turn, who, ("text_to_speech  ", "bold"), f"first audio chunk after {_ms(event['ttfb'])} ms")
        elif kind == "error":
            self._line(turn, who, ("✗ ", "bold red"), (str(event["error"]), "red"))


# ---------------------------------------------------------------------------------------------------------
# The conversation


async def _next_event(stream: asyncio.StreamReader) -> Optional[dict[str, Any]]:
    """The server's next JSON event; ``None`` at end of file. Other output is skipped."""
    while line := await stream.readline():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            return event
    return None


async def _relay(stream: asyncio.StreamReader, progress: Progress, who: Optional[tuple[str, str]] = None) -> None:
    while (event := await _next_event(stream)) is not None:
        progress.server(event, who)


def _engine_arguments(options: Options) -> list[str]:
    """The options of the process that runs the pipeline."""
    command = ["--seed", str(options.seed), "--speed", repr(options.speed), "--profile", options.profile]
    if options.real_audio:
        command.append("--real-audio")
    if options.llm_url:
        command += ["--llm-url", options.llm_url, "--llm-model", options.llm_model]
    return command


def _server_command(options: Options) -> list[str]:
    return [
        sys.executable,
        "-m",
        "wstrace.demo.server_process",
        "--out",
        str(options.out),
        "--model",
        options.model,
        "--envelope",
        options.envelope,
        *_engine_arguments(options),
    ]


def _socketio_command(options: Options, role: str, redis_url: str) -> list[str]:
    command = [sys.executable, "-m", "wstrace.demo.socketio_process", role, "--redis-url", redis_url]
    command += ["--out", str(options.out), "--model", options.model]
    return command + (_engine_arguments(options) if role == "assistant" else [])


async def _spawn(command: list[str]) -> asyncio.subprocess.Process:
    # A session of its own: Ctrl-C reaches only this process, whose finally stops the child. Its stdin closes if
    # this process dies too, so it never outlives the demo.
    return await asyncio.create_subprocess_exec(
        *command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, start_new_session=True
    )


async def _ready(child: asyncio.subprocess.Process, expected: str, what: str) -> dict[str, Any]:
    """The child's first event, which must be ``expected``; else the demo cannot run."""
    assert child.stdout is not None
    try:
        ready = await asyncio.wait_for(_next_event(child.stdout), timeout=60)
    except asyncio.TimeoutError:
        ready = None
    if ready is None or ready.get("event") != expected:
        reason = ready.get("error") if ready else None
        raise DemoError(f"{what} did not start{f': {reason}' if reason else ''}")
    return ready


async def _stop(children: Sequence[asyncio.subprocess.Process]) -> None:
    """Close each child's stdin, its signal to stop and flush its spans; kill one that takes over 20 s."""
    for child in children:
        if child.stdin is not None:
            child.stdin.close()
    for child in children:
        try:
            await asyncio.wait_for(child.wait(), timeout=20)
        except asyncio.TimeoutError:
            child.kill()
            await child.wait()


def _device(options: Options, tel: telemetry.Telemetry, progress: Progress, url: str, conversation: str) -> Device:
    pacing = Pacing(PROFILES[options.profile], options.seed, options.speed)

    async def speak(line: str, turn: int) -> bytes:
        if options.real_audio:
            return await audio.espeak(line)
        return await asyncio.to_thread(audio.speech, line, f"{options.seed}:{turn}:user")

    kind = SocketioDevice if options.stack == "socketio" else Device
    return kind(
        url,
        conversation,
        speak=speak,
        endpointing=lambda turn: pacing.sample(pacing.profile.endpointing, pacing.rng(turn, "endpointing")),
        speed=options.speed,
        conversation_span=options.model == "connection",
        tracer=tel.provider.get_tracer("wstrace.demo.device"),
        on_event=progress.device,
    )


async def _talk(options: Options, device: Device) -> list[TurnResult]:
    utterances = [dialogue.utterance(options.seed, turn) for turn in range(1, options.turns + 1)]
    # A generous bound, so that a hung LLM endpoint cannot hang the demo.
    return await asyncio.wait_for(device.converse(utterances), timeout=60 + 60 * options.turns)


async def _converse(options: Options, tel: telemetry.Telemetry, progress: Progress) -> list[TurnResult]:
    if options.stack == "socketio":
        return await _converse_socketio(options, tel, progress)
    server = await _spawn(_server_command(options))
    assert server.stdout is not None
    relay: Optional[asyncio.Task[None]] = None
    try:
        ready = await _ready(server, "listening", "the voice server")
        progress.note(f"server  listening on 127.0.0.1:{ready['port']}  (pid {ready['pid']}, service voice-server)")
        relay = asyncio.create_task(_relay(server.stdout, progress))
        conversation = uuid.uuid4().hex
        url = protocol.connect_url("127.0.0.1", int(ready["port"]), conversation)
        return await _talk(options, _device(options, tel, progress, url, conversation))
    finally:
        await _stop([server])
        if relay is not None:
            await relay


async def _converse_socketio(options: Options, tel: telemetry.Telemetry, progress: Progress) -> list[TurnResult]:
    executable = redis_server.executable()
    if executable is None:  # missing_requirements said so already, unless it went away since
        raise DemoError(f"--stack socketio needs redis-server on PATH: {redis_server.INSTALL}")
    try:
        # Not in a thread: a Ctrl-C now cancels this task at its next await, with the server's stop in the finally
        # below; a thread would start it unseen. Blocking the loop costs nothing yet.
        redis = redis_server.start(executable)
    except OSError as exc:
        raise DemoError(f"redis-server did not start: {exc}") from None
    children: list[asyncio.subprocess.Process] = []
    relays: list[asyncio.Task[None]] = []
    try:
        progress.note(f"redis   listening on 127.0.0.1:{redis.port}  (pid {redis.process.pid}, a private redis-server)")
        for role in ("gateway", "assistant"):
            children.append(await _spawn(_socketio_command(options, role, redis.url)))
        gateway, assistant = children
        listening = await _ready(gateway, "listening", "the gateway")
        ready = await _ready(assistant, "ready", "the assistant")
        port = int(listening["port"])
        progress.note(
            f"gateway listening on 127.0.0.1:{port}  (pid {listening['pid']}, service voice-gateway, python-socketio)"
        )
        progress.note(f"assistant reading {protocol.UTTERANCES}  (pid {ready['pid']}, service voice-assistant)")
        for child, who in ((gateway, progress.GATEWAY), (assistant, progress.ASSISTANT)):
            assert child.stdout is not None
            relays.append(asyncio.create_task(_relay(child.stdout, progress, who)))
        device = _device(options, tel, progress, f"http://127.0.0.1:{port}", uuid.uuid4().hex)
        return await _talk(options, device)
    finally:
        await _stop(children)
        for relay in relays:
            await relay
        redis.stop()  # last: the children used it until they stopped


# ---------------------------------------------------------------------------------------------------------
# Reading the trace back


def _trace_shape(trace: Trace) -> tuple[tuple[int, str, str], ...]:
    return tuple((row.depth, row.span.name, service(row.span)) for row in trace.rows)


def show_waterfall(traces: Sequence[Trace], console: Console) -> Omitted:
    """Print the traces folded; runs of identical small traces (``--envelope off``) print as first and last.
    Returns what the tables left out to fit the console."""
    services = services_of(traces)  # every part tags and colours the services alike
    omitted = Omitted()
    for start, end in runs([_trace_shape(t) for t in traces]):
        run = traces[start:end]
        if start:
            console.print()
        if len(run) >= FOLD_MIN:
            omitted |= render_terminal([fold(run[0])], console, services=services)
            console.print(Text(f"\n⋯ {len(run) - 2} more traces like the one above\n", style="dim"))
            omitted |= render_terminal([fold(run[-1])], console, services=services)
        else:
            omitted |= render_terminal([fold(t) for t in run], console, services=services)
    return omitted


@dataclass(frozen=True)
class TurnLatency:
    """One row of the latency table, read from the spans."""

    turn: int
    utterance: str
    transcript: str
    reply: str
    asr: Optional[float]
    llm_ttft: Optional[float]
    tts_ttfb: Optional[float]
    voice_to_voice: Optional[float]


def _number(value: Any) -> Optional[float]:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def latencies(spans: Sequence[SpanRecord]) -> list[TurnLatency]:
    """Per device turn: its utterance and voice-to-voice latency, and the server's stage figures for it.

    Stage spans are matched to turns through their ``invoke_agent`` ancestor's conversation and turn number,
    so this works in both models and with any envelope mode.
    """
    by_id = {s.span_id: s for s in spans}
    stages: dict[tuple[str, int], dict[str, SpanRecord]] = defaultdict(dict)
    for span in spans:
        # The server marks its stages' stream spans; an SDK instrumentation's span (openai-v2's "chat") is not one.
        operation = span.attributes.get(STAGE)
        if operation not in ("speech_to_text", "chat", "text_to_speech") or span.scope != "wstrace":
            continue
        parent, seen = by_id.get(span.parent_span_id or ""), 0
        while parent is not None and not parent.name.startswith("invoke_agent") and seen < 64:
            parent, seen = by_id.get(parent.parent_span_id or ""), seen + 1
        if parent is not None and service(span) in ASSISTANTS:
            key = (str(parent.attributes.get("gen_ai.conversation.id")), int(parent.attributes.get(NUMBER, 0)))
            stages[key][str(operation)] = span
    rows = []
    for span in spans:
        if span.name != "voice turn" or service(span) != "voice-device":
            continue
        a = span.attributes
        number = int(a.get(NUMBER, 0))
        found = stages.get((str(a.get("gen_ai.conversation.id")), number), {})
        asr, chat, tts = found.get("speech_to_text"), found.get("chat"), found.get("text_to_speech")
        rows.append(
            TurnLatency(
                turn=number,
                utterance=str(a.get("wstrace.voice.turn.utterance", "")),
                transcript=str(a.get("wstrace.voice.turn.transcript", "")),
                reply=str(a.get("wstrace.voice.turn.reply", "")),
                asr=_number(asr.attributes.get("wstrace.stream.time_to_last_chunk")) if asr else None,
                llm_ttft=_number(chat.attributes.get("wstrace.stream.time_to_first_chunk")) if chat else None,
                tts_ttfb=_number(tts.attributes.get("wstrace.stream.time_to_first_chunk")) if tts else None,
                voice_to_voice=_number(a.get(LATENCY)),
            )
        )
    return sorted(rows, key=lambda r: r.turn)


def latency_table(rows: Sequence[TurnLatency]) -> Table:
    table = Table(title="latency per turn (from the trace file)", title_justify="left", header_style="bold")
    table.add_column("turn", justify="right")
    table.add_column("utterance", overflow="fold")
    for header in ("ASR ms", "LLM TTFT ms", "TTS TTFB ms", "voice-to-voice ms"):
        table.add_column(header, justify="right", no_wrap=True)
    for row in rows:
        table.add_row(
            str(row.turn),
            row.utterance,
            _ms(row.asr),
            _ms(row.llm_ttft),
            _ms(row.tts_ttfb),
            Text(_ms(row.voice_to_voice), style="bold"),
        )
    if len(rows) > 1:

        def median(values: list[Optional[float]]) -> Optional[float]:
            present = [v for v in values if v is not None]
            return statistics.median(present) if present else None

        table.add_section()
        table.add_row(
            "",
            Text("median", style="italic"),
            _ms(median([r.asr for r in rows])),
            _ms(median([r.llm_ttft for r in rows])),
            _ms(median([r.tts_ttfb for r in rows])),
            Text(_ms(median([r.voice_to_voice for r in rows])), style="bold"),
        )
    return table


# ---------------------------------------------------------------------------------------------------------
# Entry point


def _header(options: Options, console: Console) -> None:
    over = "over Socket.IO, its server two processes behind Redis" if options.stack == "socketio" else "over WebSockets"
    console.print(Text(f"wstrace demo · an AI voice assistant {over}, traced end to end", style="bold"))
    audio_engines = "espeak-ng, pocketsphinx" if options.real_audio else "simulated ASR and TTS"
    llm = f"LLM {options.llm_model} at {options.llm_url}" if options.llm_url else "simulated LLM"
    console.print(
        Text(
            # Socket.IO events carry their context in their own carrier: the envelope does not apply.
            (f"model={options.model} envelope={options.envelope} " if options.stack == "websockets" else "")
            + (f"stack=socketio model={options.model} " if options.stack == "socketio" else "")
            + f"seed={options.seed} speed={options.speed:g} profile={options.profile} · {audio_engines}, {llm}",
            style="dim",
        )
    )


def run(options: Options, console: Optional[Console] = None) -> int:
    """Run the demo; returns the exit status (0 ok, 1 failed, 2 missing requirements, 130 interrupted)."""
    console = console or Console(highlight=False)
    missing = missing_requirements(options)
    if missing:
        for line in missing:
            print(f"wstrace demo: {line}", file=sys.stderr)
        return 2
    out = options.out
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.unlink(missing_ok=True)  # the file holds this run only (both processes append to it)
    except OSError as exc:
        print(f"wstrace demo: cannot write {out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    _header(options, console)
    progress = Progress(console, width=9 if options.stack == "socketio" else 7)
    tel = telemetry.start(
        "voice-device",
        out,
        model=options.model,
        envelope=options.envelope,
        stack=options.stack,
        say=lambda message: print(f"wstrace demo: {message}", file=sys.stderr),
    )
    status = 0
    try:
        asyncio.run(_converse(options, tel, progress))
    except KeyboardInterrupt:
        print("wstrace demo: interrupted", file=sys.stderr)
        status = 130
    except DemoError as exc:
        print(f"wstrace demo: {exc}", file=sys.stderr)
        status = 1
    except (OSError, asyncio.TimeoutError, ConnectionClosed) as exc:
        print(f"wstrace demo: the conversation failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        status = 1
    finally:
        tel.shutdown()
    if status == 130 or (status and not out.exists()):
        return status
    status = _report(options, console, tel.otlp) or status  # after a failure, what was traced still helps
    if tel.otlp is not None and tel.otlp.failed and not tel.otlp.sent:
        endpoint = next(os.environ[name] for name in telemetry.OTLP_ENDPOINT_VARIABLES if os.environ.get(name))
        failed = tel.otlp.failed
        print(
            f"wstrace demo: nothing reached the OTLP endpoint {endpoint} "
            f"({failed} {'batch' if failed == 1 else 'batches'} of spans failed); every span is in {out}",
            file=sys.stderr,
        )
        status = status or 1
    return status


def _report(options: Options, console: Console, otlp: Optional[telemetry.Tally]) -> int:
    out = options.out
    try:
        spans = read_spans(out)
    except OSError as exc:
        print(f"wstrace demo: cannot read {out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    traces = build_traces(spans)
    if options.waterfall and traces:
        console.print()
        console.rule("the conversation's traces", style="dim")
        omitted = show_waterfall(traces, console)
        if omitted.columns:
            note = f"{omitted.note(console.width)} (a {omitted.width}-column terminal shows them)"
            console.print(Text(note, style="dim"), overflow="fold")
    rows = latencies(spans)
    if rows:
        console.print()
        console.print(latency_table(rows))
    if options.html is not None:
        from wstrace.cli.view_html import render_html  # noqa: PLC0415 - only for --html

        options.html.write_text(render_html(traces, source=out.name), encoding="utf-8")
        console.print(Text(f"wrote {options.html}", style="dim"))
    console.print()
    console.print(
        Text.assemble(
            (f"{len(spans)} spans in {len(traces)} traces written to ", "dim"),
            (str(out), "bold"),
            (_otlp_note(otlp), "dim"),
        )
    )
    view = f"{view_command()} view {shlex.quote(str(out))}"
    console.print(Text(f"every span, unfolded: {view} --no-fold   (or: {view} --html trace.html)", "dim"))
    return 0


def _otlp_note(otlp: Optional[telemetry.Tally]) -> str:
    if otlp is None or not otlp.sent:
        return ""
    if otlp.failed:
        return f" · {otlp.sent} of {otlp.sent + otlp.failed} batches sent over OTLP"
    return " · also sent over OTLP"


def view_command() -> str:
    """How to run ``wstrace`` from here, pasted as is: ``wstrace`` when the shell finds this one, else its path
    (a venv that is not activated), else ``python -m wstrace.cli``."""
    here = Path(sys.executable).parent / "wstrace"
    found = shutil.which("wstrace")
    if found is not None and here.exists() and Path(found).resolve() == here.resolve():
        return "wstrace"
    if here.exists():
        try:
            relative = os.path.relpath(here)
        except ValueError:  # another drive (Windows)
            relative = ".."
        return shlex.quote(str(here) if relative.startswith("..") else relative)
    return f"{shlex.quote(sys.executable)} -m wstrace.cli"
