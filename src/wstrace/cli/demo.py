"""``wstrace demo``: a loopback websockets client and server, traced, with the trace printed as a tree."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Optional, Sequence

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Tracer
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from wstrace.instrumentation.websockets import WebsocketsInstrumentor


__all__ = ["render", "run"]

_SHOWN = (
    "websocket.message.ordinal",
    "messaging.message.body.size",
    "websocket.envelope",
    "websocket.close.code",
    "http.response.status_code",
)


async def _conversation(tracer: Tracer, messages: int) -> None:
    async def echo(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send("echo: " + (message if isinstance(message, str) else message.hex()))

    async with serve(echo, "127.0.0.1", 0) as server:
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/chat"
        async with connect(url) as ws:
            for n in range(1, messages + 1):
                with tracer.start_as_current_span(f"ask #{n}"):
                    await ws.send(f"question {n}")
                    await ws.recv()
    await asyncio.sleep(0.05)  # let both ends record their close


def render(spans: Sequence[ReadableSpan]) -> str:
    """Draw spans as one tree per trace: name, offset and duration in ms, key attributes."""
    by_parent: dict[Optional[int], list[ReadableSpan]] = defaultdict(list)
    ids = {s.context.span_id for s in spans}
    for span in sorted(spans, key=lambda s: s.start_time or 0):
        parent = span.parent.span_id if span.parent and span.parent.span_id in ids else None
        by_parent[parent].append(span)
    lines: list[str] = []

    def walk(span: ReadableSpan, depth: int, origin: int) -> None:
        start, end = span.start_time or 0, span.end_time or 0
        attributes = span.attributes or {}
        shown = " ".join(f"{k.rsplit('.', 1)[-1]}={attributes[k]!s}" for k in _SHOWN if k in attributes)
        links = f" links={len(span.links)}" if span.links else ""
        lines.append(
            f"{'  ' * depth}{span.name:<{max(1, 28 - 2 * depth)}} +{(start - origin) / 1e6:7.2f} ms"
            f" {(end - start) / 1e6:7.2f} ms  {span.kind.name.lower():<8}{links} {shown}".rstrip()
        )
        for child in by_parent[span.context.span_id]:
            walk(child, depth + 1, origin)

    for root in by_parent[None]:
        lines.append(f"trace {root.context.trace_id:032x}")
        walk(root, 1, root.start_time or 0)
    return "\n".join(lines)


def run(*, model: Optional[str] = None, envelope: Optional[str] = None, messages: int = 3) -> int:
    """Run the conversation and print its traces; returns the exit status."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentor = WebsocketsInstrumentor()
    instrumentor.instrument(tracer_provider=provider, model=model, envelope=envelope)
    try:
        asyncio.run(_conversation(provider.get_tracer("wstrace.demo"), messages))
    finally:
        instrumentor.uninstrument()
    spans = exporter.get_finished_spans()
    print(render(spans))
    print(f"\n{len(spans)} spans in {len({s.context.trace_id for s in spans})} traces")
    return 0
