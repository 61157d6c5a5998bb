"""A long-lived, mostly idle websockets connection: a device reports its status now and then, the server pushes.

The device connects once and sends ``{"status": "ok", "seq": n}`` every ``interval`` seconds (30 by default),
with no answer; it also listens, in a task of its own, for notices the server pushes. The server records each
report and, once, pushes a notice from outside any connection (an operator's announcement) in the middle of an
idle gap. In the ``message`` model nothing lasts as long as the connection: the handshake trace ends at the
101, each report is a trace of its own (the device's ``send``, a run of one, and the server's ``receive``,
both linked to their handshake), the push is a trace of its own too (the server's ``send`` run, linked
``inbound`` to the report it received last, and the device's ``receive``), and each end's ``close`` is a root
at the end. Every span ends as its message is done with, not at the next message.

A run of messages ends at an idle gap longer than ``stream_idle`` (5 s by default): reports further apart than
that are runs of one. Reports closer together than ``stream_idle`` with nothing received between them would be
one run, one ``send`` span counting them (``docs/streams.md``); shorten ``stream_idle`` below the report
interval if each must be a trace of its own. Run it::

    python examples/idle_connection.py --interval 2

Spans are printed to the console. ``tests/examples/test_idle_connection.py`` runs it over loopback, with the
interval and ``stream_idle`` scaled down, and checks the trace shape.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from wstrace.instrumentation.websockets import WebsocketsInstrumentor


INTERVAL = 30.0
"""Seconds between two status reports."""
STREAM_IDLE = 5.0
"""wstrace's ``stream_idle`` (its default): a gap longer than this ends a run; shorter than ``INTERVAL``."""
REPORTS = 3
NOTICE = "firmware 2.1 available"


class Monitor:
    """The server: records every device's reports; ``notify`` pushes a notice to every connected device."""

    def __init__(self) -> None:
        self.devices: set[ServerConnection] = set()
        self.reports: list[dict[str, Any]] = []

    async def handler(self, ws: ServerConnection) -> None:
        self.devices.add(ws)
        try:
            async for message in ws:
                self.reports.append(json.loads(message))
        finally:
            self.devices.discard(ws)

    async def notify(self, notice: str) -> None:
        for ws in list(self.devices):
            await ws.send(json.dumps({"notice": notice}))


async def device(url: str, reports: int = REPORTS, interval: float = INTERVAL) -> list[str]:
    """The device: one connection, a status report every ``interval`` seconds; returns the notices it heard."""
    notices: list[str] = []
    async with connect(url) as ws:

        async def listen() -> None:
            async for message in ws:
                notices.append(json.loads(message)["notice"])

        listening = asyncio.create_task(listen())
        for seq in range(1, reports + 1):
            if seq > 1:
                await asyncio.sleep(interval)
            await ws.send(json.dumps({"status": "ok", "seq": seq}))
    await listening
    return notices


async def main(
    provider: trace.TracerProvider | None = None,
    interval: float = INTERVAL,
    stream_idle: float = STREAM_IDLE,
    reports: int = REPORTS,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Serve on a free loopback port; a device reports ``reports`` times, ``interval`` apart, and the server
    pushes a notice halfway between the second and third report. Returns the reports and the notices heard."""
    instrumentor = WebsocketsInstrumentor()
    instrumentor.instrument(tracer_provider=provider, stream_idle=stream_idle)
    try:
        monitor = Monitor()
        async with serve(monitor.handler, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            reporting = asyncio.create_task(device(f"ws://127.0.0.1:{port}/status", reports, interval))
            await asyncio.sleep(1.5 * interval)  # an operator's announcement, in the middle of an idle gap
            await monitor.notify(NOTICE)
            notices = await reporting
            await asyncio.sleep(0.05)  # the server's end sees the close
        return monitor.reports, notices
    finally:
        instrumentor.uninstrument()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--interval", type=float, default=INTERVAL, help="seconds between status reports")
    parser.add_argument("--stream-idle", type=float, default=None, help="wstrace's stream_idle (default: 5 s)")
    args = parser.parse_args()
    idle = args.stream_idle if args.stream_idle is not None else min(STREAM_IDLE, args.interval / 2)
    console = TracerProvider()
    console.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    received, heard = asyncio.run(main(console, args.interval, idle))
    print("reports", received, "notices", heard)
