"""A private redis-server on a free loopback port: the demo's ``--stack socketio`` and the test suite start one.

Standard library only (the test suite's launcher, ``tests/redis_server.py``, imports it without the demo's
dependencies). The server keeps nothing on disk (no RDB snapshot, no append-only file) and runs in a session of its
own, so a Ctrl-C in the terminal does not stop it under the processes that still use it: its owner stops it.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from types import TracebackType
from typing import Optional


__all__ = ["INSTALL", "RedisServer", "answers", "executable", "free_port", "start"]

INSTALL = "apt-get install redis-server (macOS: brew install redis)"
"""How to get the binary, for the messages that say it is missing."""


def executable() -> Optional[str]:
    """The ``redis-server`` found on ``PATH``, or ``None``."""
    return shutil.which("redis-server")


def free_port() -> int:
    """A loopback port free at the time of the call."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def answers(port: int) -> bool:
    """Whether a redis-server on ``port`` answers ``PING`` (inline command, no client library)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """A running private redis-server; a context manager that stops it."""

    def __init__(self, process: subprocess.Popen[bytes], port: int) -> None:
        self.process = process
        self.port = port

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        """Kill it and wait: it holds nothing worth a clean shutdown. Idempotent."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(5)

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(
        self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        self.stop()


def start(path: str, *, timeout: float = 5.0, attempts: int = 3) -> RedisServer:
    """Start ``path`` on a free loopback port and wait until it answers ``PING``; raises ``OSError`` if it never
    does (``attempts`` ports, since another process may take the port between the probe and the bind)."""
    for _attempt in range(attempts):
        port = free_port()
        process = subprocess.Popen(
            [path, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and process.poll() is None:
            if answers(port):
                return RedisServer(process, port)
            time.sleep(0.02)
        RedisServer(process, port).stop()
    raise OSError(f"{path} did not answer PING on a loopback port")
