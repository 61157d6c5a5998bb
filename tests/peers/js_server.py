"""A wstrace-instrumented websockets server for the JavaScript package's tests (js/test/, tests/js/), run alone.

    python js_server.py [--envelope MODE] [--sources headers,query,subprotocol] [--chunks N] [--subprotocols chat,...]
                        [--route /chat] [--static DIR]

Prints one JSON object per line on stdout:

- ``{"event": "listening", "port": N, "http": M}`` once it listens (``http``: with ``--static``, the port of a
  static file server for DIR, where ``/node_modules/...`` paths resolve as a browser's import map needs);
- ``{"event": "message", "type": "text"|"binary", "data": ..., "subprotocol": ...}`` for each message the handler
  got (binary data in base64), after wstrace stripped its envelope;
- ``{"event": "span", ...}`` for each span that ends (name, kind, ids, parent, attributes, links, status).

For each message the handler sends ``--chunks`` replies (default 1) inside a ``handle`` span of its own: the text
``<message>:<i>``, or the binary message followed by the byte ``i``. The message ``close`` makes it close the
connection with code 4000, reason ``bye``. The process exits when its standard input closes.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import json
import mimetypes
import sys
import threading
from collections.abc import Sequence
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Optional

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from websockets.asyncio.server import ServerConnection, serve

from wstrace.instrumentation.websockets import WebsocketsInstrumentor


_lock = threading.Lock()


def emit(**fields: Any) -> None:
    with _lock:
        sys.stdout.write(json.dumps(fields) + "\n")
        sys.stdout.flush()


def _hex(value: int, width: int) -> str:
    return f"{value:0{width}x}"


def span_record(span: ReadableSpan) -> dict[str, Any]:
    context = span.get_span_context()
    parent = span.parent
    return {
        "event": "span",
        "name": span.name,
        "kind": span.kind.name,
        "trace_id": _hex(context.trace_id, 32),
        "span_id": _hex(context.span_id, 16),
        "parent_span_id": _hex(parent.span_id, 16) if parent is not None else None,
        "attributes": dict(span.attributes or {}),
        "links": [
            {
                "trace_id": _hex(link.context.trace_id, 32),
                "span_id": _hex(link.context.span_id, 16),
                "attributes": dict(link.attributes or {}),
            }
            for link in span.links
        ],
        "status": span.status.status_code.name,
        "start": span.start_time,
        "end": span.end_time,
    }


class LineExporter(SpanExporter):
    """Each finished span as one JSON line on stdout."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        for span in spans:
            emit(**span_record(span))
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def describe(message: str | bytes) -> dict[str, str]:
    if isinstance(message, str):
        return {"type": "text", "data": message}
    return {"type": "binary", "data": base64.b64encode(message).decode()}


async def handler(ws: ServerConnection, chunks: int) -> None:
    tracer = trace.get_tracer("js-peer")
    async for message in ws:
        emit(event="message", subprotocol=ws.subprotocol, **describe(message))
        if message == "close":
            await ws.close(4000, "bye")
            return
        with tracer.start_as_current_span("handle"):
            for i in range(chunks):
                if isinstance(message, str):
                    await ws.send(f"{message}:{i}")
                else:
                    await ws.send(message + bytes([i]))


class StaticFiles(SimpleHTTPRequestHandler):
    """Files under a directory, for a browser's ES modules: a path that names no file redirects to the ``.js`` or
    ``/index.js`` that extensionless imports leave out, and a file a package's ``browser`` field maps to another
    redirects there (a redirect, so that the module's own relative imports resolve from where it really is)."""

    def send_head(self) -> Any:
        found = Path(self.translate_path(self.path))
        target = None
        for candidate in (found, Path(f"{found}.js"), found / "index.js"):
            if candidate.is_file():
                target = browser_file(candidate)
                break
        if target is not None and Path(target) != found:
            self.send_response(302)
            self.send_header("Location", "/" + Path(target).relative_to(self.directory).as_posix())
            self.end_headers()
            return None
        return super().send_head()

    def guess_type(self, path: Any) -> str:
        if str(path).endswith((".js", ".mjs")):
            return "text/javascript"
        return mimetypes.guess_type(str(path))[0] or "application/octet-stream"

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def browser_file(path: Path) -> Path:
    """``path``, or what the ``browser`` field of the package holding it maps it to."""
    for package in path.parents:
        manifest = package / "package.json"
        if not manifest.is_file():
            continue
        try:
            meta = json.loads(manifest.read_text())
        except ValueError:
            return path
        if "name" not in meta:  # a nested {"type": "module"} manifest: the package is further up
            continue
        browser = meta.get("browser")
        if isinstance(browser, dict):
            mapped = browser.get("./" + path.relative_to(package).as_posix())
            if isinstance(mapped, str):
                return (package / mapped).resolve()
        break
    return path


def serve_static(directory: str) -> int:
    handler_class = functools.partial(StaticFiles, directory=str(Path(directory).resolve()))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler_class)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return int(server.server_address[1])


async def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--envelope", default="negotiate")
    parser.add_argument("--sources", default="headers")
    parser.add_argument("--chunks", type=int, default=1)
    parser.add_argument("--subprotocols", default="")
    parser.add_argument("--route", default=None)
    parser.add_argument("--static", default=None)
    args = parser.parse_args(argv)

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(LineExporter()))
    trace.set_tracer_provider(provider)
    options: dict[str, Any] = {
        "envelope": args.envelope,
        "handshake_sources": tuple(s for s in args.sources.split(",") if s),
    }
    if args.route:
        options["routes"] = args.route  # a template: the JS client is given the same one
    WebsocketsInstrumentor().instrument(tracer_provider=provider, **options)

    accepted = [s for s in args.subprotocols.split(",") if s]

    def select_subprotocol(connection: Any, offered: Sequence[str]) -> Optional[str]:
        # The first offered subprotocol this server speaks, if any: a client offering none is welcome too.
        return next((p for p in offered if p in accepted), None)

    http_port = serve_static(args.static) if args.static else None
    loop = asyncio.get_running_loop()
    on_message = functools.partial(handler, chunks=args.chunks)
    async with serve(on_message, "127.0.0.1", 0, select_subprotocol=select_subprotocol) as server:  # type: ignore[arg-type]
        emit(event="listening", port=server.sockets[0].getsockname()[1], http=http_port)
        await loop.run_in_executor(None, sys.stdin.read)  # until the test closes our stdin
    provider.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
