"""Loopback stand-ins for the demo's optional peers: an OpenAI-compatible LLM and an OTLP/HTTP collector."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


REPLY_TOKENS = ("Hello", " from", " the", " fake", " model", ".", " Nice", " to", " meet", " you", ".")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    requests: list[tuple[str, bytes]]
    headers: list[dict[str, str]]
    """Each request's headers, names in lower case, in the order of ``requests``."""


class _LLMHandler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.requests.append((self.path, body))
        self.server.headers.append({name.lower(): value for name, value in self.headers.items()})
        if not self.path.endswith("/chat/completions"):
            self.send_error(404)
            return
        request = json.loads(body)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        for index, token in enumerate(REPLY_TOKENS):
            chunk = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": 1,
                "model": request["model"],
                "choices": [
                    {
                        "index": 0,
                        "delta": {"role": "assistant", "content": token} if index == 0 else {"content": token},
                        "finish_reason": None,
                    }
                ],
            }
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()
        last = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": request["model"],
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        }
        self.wfile.write(f"data: {json.dumps(last)}\n\ndata: [DONE]\n\n".encode())
        self.wfile.flush()


class _CollectorHandler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.requests.append((self.path, body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()


@contextmanager
def _serve(handler: type[BaseHTTPRequestHandler]) -> Iterator[_Server]:
    server = _Server(("127.0.0.1", 0), handler)
    server.requests = []
    server.headers = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@contextmanager
def fake_llm() -> Iterator[_Server]:
    """An OpenAI-compatible ``/v1/chat/completions`` that streams :data:`REPLY_TOKENS`."""
    with _serve(_LLMHandler) as server:
        yield server


@contextmanager
def fake_collector() -> Iterator[_Server]:
    """An OTLP/HTTP receiver that keeps every request body."""
    with _serve(_CollectorHandler) as server:
        yield server


def url(server: _Server) -> str:
    host, port = server.server_address[:2]
    return f"http://{host!s}:{port}"
