"""A benchmark server: one WebSocket stack, bare or instrumented, on 127.0.0.1.

    python -m benchmarks.server --stack websockets|aiohttp|starlette|tornado --port P --variant V [options]

Variants: ``bare``; ``wstrace`` (``--model``, ``--envelope``, ``--streams``, ``--chunk-spans``,
``--sampled-out``); ``minimal`` (the hand-written raw-API instrumentation of :mod:`benchmarks.minimal`,
``--envelope on|off``); ``otel-asgi`` and ``ddtrace`` (Starlette only). ``--traced-peer`` (bare websockets
only) makes the bare server a traced peer at no cost of its own, for an instrumented client: it answers the
envelope offer in the handshake, strips the envelope of the messages it reads, and sends ``ack`` in one.

Every connection at ``/bench`` echoes each message, except ``stream:N``, answered with N 64-byte chunks sent
by the handler while it handles the request (a reply stream); ``push:N``, whose N chunks a task started
with an empty ``contextvars.Context`` sends (a worker's or a timer's pushes, with no span current), while
the handler goes on reading; and ``upload:N``, after which the server reads N messages and answers ``ack``.
The server is driven over stdin/stdout: it prints ``ready`` once listening; a ``probe`` line is answered
with a ``probe {json}`` line (RSS, pymalloc blocks and GC objects after exporting pending spans and a
full collection); a ``cpu`` line with a ``cpu {json}`` line (the CPU time the process has used, all its
threads, read at once); ``stop`` (or end of input) stops it, and it prints ``spans N`` (spans that reached
the discarding exporter) before it exits. It also stops by itself after ``--lifetime`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import json
import os
import sys
import threading
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from typing import Any, Optional

from benchmarks.common import (
    CHUNK,
    ENVELOPE_OFFER,
    PUSH_PREFIX,
    ROUTE,
    STREAM_PREFIX,
    UPLOAD_PREFIX,
    memory_probe,
    raise_fd_limit,
    sdk,
    unwrap,
    use_bench_deps,
    wrap,
)


Recv = Callable[[], Awaitable[Any]]
Send = Callable[[Any], Awaitable[None]]

BACKLOG = 2048


class Telemetry:
    """The instrumentation a variant installed: what to flush before a probe and how many spans it made."""

    def __init__(self) -> None:
        self.flush: Callable[[], object] = lambda: None
        self.count: Callable[[], Optional[int]] = lambda: None
        self.tracer: Any = None
        self.envelope = False
        self.traced_peer = False
        """A bare server playing a traced peer (``--traced-peer``): see the module's docstring."""


TELEMETRY = Telemetry()


async def session(recv: Recv, send: Send) -> None:
    """The application every stack runs: echo, ``stream:N`` chunks, ``push:N`` chunks from a task with no
    context, or ``upload:N`` read and acknowledged; with ``minimal``, its spans too."""
    minimal = None
    if TELEMETRY.tracer is not None:
        from benchmarks.minimal import MinimalConnection  # noqa: PLC0415

        minimal = MinimalConnection(TELEMETRY.tracer, ROUTE, envelope=TELEMETRY.envelope)
    pushers: set[asyncio.Task[None]] = set()
    while True:
        message = await recv()
        if message is None:
            return
        if minimal is not None:
            message = minimal.received(message)
        elif TELEMETRY.traced_peer:
            message = unwrap(message)
        if isinstance(message, str) and message.startswith(STREAM_PREFIX):
            for _ in range(int(message[len(STREAM_PREFIX) :])):
                if minimal is None:
                    await send(CHUNK)
                else:
                    wire, span = minimal.send_span(CHUNK)
                    await send(wire)
                    span.end()
        elif isinstance(message, str) and message.startswith(PUSH_PREFIX):
            # A worker: a task made under an empty context, so no span (and no message being handled) is
            # current where it sends. The handler goes back to reading at once.
            task = asyncio.create_task(
                push(send, int(message[len(PUSH_PREFIX) :]), minimal), context=contextvars.Context()
            )
            pushers.add(task)
            task.add_done_callback(pushers.discard)
        elif isinstance(message, str) and message.startswith(UPLOAD_PREFIX):
            for _ in range(int(message[len(UPLOAD_PREFIX) :])):
                if await recv() is None:
                    return
            await send(wrap("ack") if TELEMETRY.traced_peer else "ack")
        elif minimal is None:
            await send(message)
        else:
            wire, span = minimal.send_start(message)
            await send(wire)
            minimal.send_end(span, len(message))
        if minimal is not None:
            minimal.receive_done()


async def push(send: Send, count: int, minimal: Any) -> None:
    for _ in range(count):
        if minimal is None:
            await send(CHUNK)
        else:
            wire, span = minimal.send_span(CHUNK)
            await send(wire)
            span.end()


# Stacks ---------------------------------------------------------------------------------------------


async def serve_websockets(port: int, stop: asyncio.Future[None]) -> None:
    from websockets.asyncio.server import ServerConnection, serve  # noqa: PLC0415
    from websockets.exceptions import ConnectionClosed  # noqa: PLC0415

    async def handler(ws: ServerConnection) -> None:
        async def recv() -> Any:
            try:
                return await ws.recv()
            except ConnectionClosed:
                return None

        await session(recv, ws.send)

    def answer_envelope(connection: Any, request: Any, response: Any) -> None:
        name, value = ENVELOPE_OFFER
        if request.headers.get(name) == value and response.status_code == 101:
            response.headers[name] = value

    options: dict[str, Any] = {"process_response": answer_envelope} if TELEMETRY.traced_peer else {}
    async with serve(handler, "127.0.0.1", port, compression=None, ping_interval=None, backlog=BACKLOG, **options):
        print("ready", flush=True)
        await stop


async def serve_aiohttp(port: int, stop: asyncio.Future[None]) -> None:
    from aiohttp import WSMsgType, web  # noqa: PLC0415

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False, autoping=True)
        await ws.prepare(request)

        async def recv() -> Any:
            msg = await ws.receive()
            return msg.data if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY) else None

        async def send(data: Any) -> None:
            if isinstance(data, str):
                await ws.send_str(data)
            else:
                await ws.send_bytes(data)

        await session(recv, send)
        return ws

    app = web.Application()
    app.router.add_get(ROUTE, handler)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=BACKLOG).start()
    print("ready", flush=True)
    try:
        await stop
    finally:
        await runner.cleanup()


def starlette_app() -> Any:
    from starlette.applications import Starlette  # noqa: PLC0415
    from starlette.routing import WebSocketRoute  # noqa: PLC0415
    from starlette.websockets import WebSocket  # noqa: PLC0415

    async def endpoint(ws: WebSocket) -> None:
        await ws.accept()

        async def recv() -> Any:
            message = await ws.receive()
            if message["type"] != "websocket.receive":
                return None
            text = message.get("text")
            return text if text is not None else message.get("bytes")

        async def send(data: Any) -> None:
            if isinstance(data, str):
                await ws.send_text(data)
            else:
                await ws.send_bytes(data)

        await session(recv, send)

    return Starlette(routes=[WebSocketRoute(ROUTE, endpoint)])


async def serve_starlette(port: int, stop: asyncio.Future[None], app: Any) -> None:
    import uvicorn  # noqa: PLC0415

    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        loop="none",  # the asyncio loop this coroutine runs in
        lifespan="off",
        log_level="warning",
        log_config=None,
        ws_ping_interval=None,
        ws_per_message_deflate=False,
        backlog=BACKLOG,
    )
    server = uvicorn.Server(config)  # stopped over stdin (should_exit), never by a signal
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("uvicorn stopped before it started")
        await asyncio.sleep(0.01)
    print("ready", flush=True)
    try:
        await stop
    finally:
        server.should_exit = True
        await task


async def serve_tornado(port: int, stop: asyncio.Future[None]) -> None:
    from tornado.httpserver import HTTPServer  # noqa: PLC0415
    from tornado.netutil import bind_sockets  # noqa: PLC0415
    from tornado.web import Application  # noqa: PLC0415
    from tornado.websocket import WebSocketHandler  # noqa: PLC0415

    class Handler(WebSocketHandler):
        minimal: Any = None

        def get_compression_options(self) -> None:
            return None

        def open(self) -> None:
            if TELEMETRY.tracer is not None:
                from benchmarks.minimal import MinimalConnection  # noqa: PLC0415

                self.minimal = MinimalConnection(TELEMETRY.tracer, ROUTE, envelope=TELEMETRY.envelope)

        def on_message(self, message: str | bytes) -> None:
            # tornado hands each message to a callback, not to session(): the same application, inline.
            minimal = self.minimal
            if minimal is not None:
                message = minimal.received(message)
            if isinstance(message, str) and message.startswith(STREAM_PREFIX):
                for _ in range(int(message[len(STREAM_PREFIX) :])):
                    if minimal is None:
                        self.write_message(CHUNK)
                    else:
                        wire, span = minimal.send_span(CHUNK)
                        self.write_message(wire)
                        span.end()
            elif minimal is None:
                self.write_message(message, binary=isinstance(message, bytes))
            else:
                wire, span = minimal.send_start(message)
                self.write_message(wire, binary=isinstance(wire, bytes))
                minimal.send_end(span, len(message))
            if minimal is not None:
                minimal.receive_done()

    sockets = bind_sockets(port, "127.0.0.1", backlog=BACKLOG)
    server = HTTPServer(Application([(ROUTE, Handler)], websocket_ping_interval=0))
    server.add_sockets(sockets)
    print("ready", flush=True)
    try:
        await stop
    finally:
        server.stop()


# Variants -------------------------------------------------------------------------------------------


def install(args: argparse.Namespace) -> Any:
    """Set up the variant's instrumentation; returns the (possibly wrapped) Starlette app."""
    app = starlette_app() if args.stack == "starlette" else None
    if args.variant == "bare":
        TELEMETRY.traced_peer = args.traced_peer
        return app
    if args.variant == "ddtrace":
        return install_ddtrace(app)
    tracer_provider, meter_provider, spans = sdk(sampled=not args.sampled_out)
    TELEMETRY.flush = tracer_provider.force_flush
    TELEMETRY.count = lambda: spans.count
    if args.variant == "minimal":
        TELEMETRY.tracer = tracer_provider.get_tracer("bench.minimal")
        TELEMETRY.envelope = args.envelope != "off"
        return app
    if args.variant == "otel-asgi":
        from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware  # noqa: PLC0415

        return OpenTelemetryMiddleware(app, tracer_provider=tracer_provider, meter_provider=meter_provider)
    options: dict[str, Any] = {
        "tracer_provider": tracer_provider,
        "meter_provider": meter_provider,
        "model": args.model,
        "envelope": args.envelope,
        "streams": args.streams,
        "metrics": args.metrics,
        "chunk_spans": args.chunk_spans,
    }
    if args.stack == "websockets":
        from wstrace.instrumentation.websockets import WebsocketsInstrumentor  # noqa: PLC0415

        WebsocketsInstrumentor().instrument(**options)
    elif args.stack == "aiohttp":
        from wstrace.instrumentation.aiohttp import AiohttpInstrumentor  # noqa: PLC0415

        AiohttpInstrumentor().instrument(**options)
    elif args.stack == "starlette":
        from wstrace.instrumentation.starlette import StarletteInstrumentor  # noqa: PLC0415

        StarletteInstrumentor().instrument(**options)
    else:
        from wstrace.instrumentation.tornado import TornadoInstrumentor  # noqa: PLC0415

        TornadoInstrumentor().instrument(**options)
    return app


def install_ddtrace(app: Any) -> Any:
    """Datadog's ASGI middleware with WebSocket message spans, kept on this machine, its spans discarded."""
    # Before the import: ddtrace reads its settings once. The agent URL is a closed local port; no
    # telemetry, remote configuration, stats, crash tracker or profiler (none would run in a test).
    local = {
        "DD_TRACE_AGENT_URL": "http://127.0.0.1:9",
        "DD_INSTRUMENTATION_TELEMETRY_ENABLED": "false",
        "DD_REMOTE_CONFIGURATION_ENABLED": "false",
        "DD_TRACE_STATS_COMPUTATION_ENABLED": "false",
        "DD_CRASHTRACKING_ENABLED": "false",
        "DD_PROFILING_ENABLED": "false",
        "DD_TRACE_WEBSOCKET_MESSAGES_ENABLED": "true",
    }
    os.environ.update(local)
    use_bench_deps()
    from ddtrace.contrib.asgi import TraceMiddleware  # type: ignore[import-not-found,unused-ignore]  # noqa: PLC0415
    from ddtrace.internal.writer import TraceWriter  # type: ignore[import-not-found,unused-ignore]  # noqa: PLC0415
    from ddtrace.trace import tracer  # type: ignore[import-not-found,unused-ignore]  # noqa: PLC0415

    class Discard(TraceWriter):  # type: ignore[misc]
        """Counts finished spans and drops them: nothing is encoded, nothing leaves the process."""

        def __init__(self) -> None:
            self.spans = 0

        def recreate(self, appsec_enabled: Optional[bool] = None, llmobs_enabled: Optional[bool] = None) -> Discard:
            return self

        def stop(self, timeout: Optional[float] = None) -> None:
            pass

        def write(self, spans: Any = None) -> None:
            self.spans += len(spans or ())

        def flush_queue(self) -> None:
            pass

    aggregator = tracer._span_aggregator
    previous, discard = aggregator.writer, Discard()
    aggregator.writer = discard
    try:
        previous.stop()
    except Exception:
        pass
    TELEMETRY.count = lambda: discard.spans
    return TraceMiddleware(app)


def report_allocations(stats: list[tracemalloc.StatisticDiff]) -> None:
    """New allocations by package, and each package's top lines, on stderr."""
    groups: dict[str, list[tracemalloc.StatisticDiff]] = {}
    for stat in stats:
        path = stat.traceback[0].filename
        if "site-packages/" in path:
            top = path.split("site-packages/")[1].split("/")[0]
        elif "/src/wstrace/" in path:
            top = "wstrace"
        elif "/benchmarks/" in path:
            top = "benchmarks"
        else:
            top = "standard library"
        groups.setdefault(top, []).append(stat)
    ranked = sorted(groups.items(), key=lambda item: -sum(s.size_diff for s in item[1]))
    for top, members in ranked[:8]:
        print(f"tracemalloc {top}: {sum(s.size_diff for s in members):+,} B", file=sys.stderr)
        for stat in members[:8]:
            print(f"tracemalloc     {stat}", file=sys.stderr)


# Control --------------------------------------------------------------------------------------------


def control(loop: asyncio.AbstractEventLoop, stop: asyncio.Future[None]) -> None:
    """Read commands from stdin in a thread; run them on the loop."""

    snapshots: list[Any] = []

    def probe() -> None:
        TELEMETRY.flush()
        print(f"probe {json.dumps(memory_probe())}", flush=True)
        if tracemalloc.is_tracing():
            # --tracemalloc: what was allocated since the previous probe, by line, on stderr.
            snapshots.append(tracemalloc.take_snapshot())
            if len(snapshots) > 1:
                report_allocations(snapshots[-1].compare_to(snapshots[-2], "lineno"))

    def finish() -> None:
        if not stop.done():
            stop.set_result(None)

    for line in sys.stdin:
        command = line.strip()
        if command == "probe":
            loop.call_soon_threadsafe(probe)
        elif command == "cpu":  # read here, not on the loop: the loop may be busy, and this waits for nothing
            print(f"cpu {json.dumps({'cpu': time.process_time()})}", flush=True)
        elif command == "stop":
            break
    loop.call_soon_threadsafe(finish)


async def main(args: argparse.Namespace, app: Any) -> None:
    loop = asyncio.get_running_loop()
    stop: asyncio.Future[None] = loop.create_future()
    threading.Thread(target=control, args=(loop, stop), daemon=True).start()

    def expire() -> None:
        if not stop.done():
            stop.set_result(None)

    loop.call_later(args.lifetime, expire)
    if args.stack == "websockets":
        await serve_websockets(args.port, stop)
    elif args.stack == "aiohttp":
        await serve_aiohttp(args.port, stop)
    elif args.stack == "starlette":
        await serve_starlette(args.port, stop, app)
    else:
        await serve_tornado(args.port, stop)


def parse(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stack", choices=("websockets", "aiohttp", "starlette", "tornado"), default="websockets")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--variant", choices=("bare", "wstrace", "minimal", "otel-asgi", "ddtrace"), default="bare")
    parser.add_argument("--model", choices=("message", "connection"), default="message")
    parser.add_argument("--envelope", choices=("off", "negotiate", "always", "on"), default="negotiate")
    parser.add_argument("--streams", choices=("on", "off"), default="on")
    parser.add_argument("--metrics", choices=("on", "off"), default="on")
    parser.add_argument("--chunk-spans", action="store_true")
    parser.add_argument("--sampled-out", action="store_true", help="sample every handshake out")
    parser.add_argument("--traced-peer", action="store_true", help="bare websockets: play a traced peer")
    parser.add_argument("--lifetime", type=float, default=300.0, help="stop after this many seconds")
    parser.add_argument("--profile", metavar="OUT", help="profile with pyinstrument from ready to stop; write OUT")
    parser.add_argument("--tracemalloc", action="store_true", help="trace allocations; each probe lists the new ones")
    args = parser.parse_args(argv)
    if args.variant in ("otel-asgi", "ddtrace") and args.stack != "starlette":
        parser.error(f"--variant {args.variant} needs --stack starlette")
    if args.traced_peer and (args.variant != "bare" or args.stack != "websockets"):
        parser.error("--traced-peer needs --variant bare --stack websockets")
    if args.envelope == "on":
        args.envelope = "negotiate"
    args.streams = args.streams == "on"
    return args


def run(argv: Optional[list[str]] = None) -> None:
    args = parse(argv)
    raise_fd_limit()
    if args.tracemalloc:
        tracemalloc.start(1)
    app = install(args)
    profiler = None
    if args.profile:
        from pyinstrument import Profiler  # noqa: PLC0415

        profiler = Profiler(interval=0.0002, async_mode="disabled")
        profiler.start()
    try:
        asyncio.run(main(args, app))
    finally:
        if profiler is not None:
            profiler.stop()
            with open(args.profile, "w") as out:
                out.write(profiler.output_text(unicode=True, show_all=False))
        TELEMETRY.flush()
        count = TELEMETRY.count()
        if count is not None:
            print(f"spans {count}", flush=True)


if __name__ == "__main__":
    run()
