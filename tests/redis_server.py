"""A private redis-server for the tests that need a real one (the ``redis_port`` fixture in ``conftest.py``)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Optional

import pytest
import redis


REDIS_SERVER = "/usr/bin/redis-server"


def require_redis_server(candidates: Sequence[Optional[str]], environ: Mapping[str, str]) -> str:
    """The first redis-server that exists; missing, it fails the test under CI and skips it elsewhere."""
    for path in candidates:
        if path and os.access(path, os.X_OK):
            return path
    message = (
        f"redis-server not found (looked for {', '.join(p for p in candidates if p)}): "
        "install it (apt-get install redis-server) to run the Redis hop tests"
    )
    if environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
        pytest.fail(f"{message}; CI is set, so this is an error, not a skip", pytrace=False)
    pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ping(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        client = redis.Redis(port=port, socket_connect_timeout=0.2, socket_timeout=0.5)
        try:
            if client.ping():
                return True
        except redis.ConnectionError:
            time.sleep(0.02)
        finally:
            client.close()
    return False


@contextmanager
def running() -> Iterator[int]:
    """A private redis-server on a free loopback port, no persistence, killed at the end; yields its port."""
    server = require_redis_server([REDIS_SERVER, shutil.which("redis-server")], os.environ)
    for _attempt in range(3):  # another process may take the port between probe and bind
        port = _free_port()
        proc = subprocess.Popen(
            [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if _ping(port, 5):
            break
        proc.kill()
        proc.wait(5)
    else:
        pytest.fail("redis-server did not answer PING", pytrace=False)
    try:
        yield port
    finally:
        proc.kill()
        proc.wait(5)
