"""A private redis-server for the tests that need a real one (the ``redis_port`` fixture in ``conftest.py``).

The launcher itself is the demo's (:mod:`wstrace.demo.redis_server`, standard library only); this module adds the
suite's rule for a missing binary: skip here, fail under CI.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Optional

import pytest

from wstrace.demo import redis_server as launcher


REDIS_SERVER = "/usr/bin/redis-server"


def require_redis_server(candidates: Sequence[Optional[str]], environ: Mapping[str, str]) -> str:
    """The first redis-server that exists; missing, it fails the test under CI and skips it elsewhere."""
    for path in candidates:
        if path and os.access(path, os.X_OK):
            return path
    message = (
        f"redis-server not found (looked for {', '.join(p for p in candidates if p)}): "
        f"install it ({launcher.INSTALL}) to run the Redis tests"
    )
    if environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
        pytest.fail(f"{message}; CI is set, so this is an error, not a skip", pytrace=False)
    pytest.skip(message)


@contextmanager
def running() -> Iterator[int]:
    """A private redis-server on a free loopback port, no persistence, killed at the end; yields its port."""
    server = require_redis_server([REDIS_SERVER, shutil.which("redis-server")], os.environ)
    try:
        started = launcher.start(server)
    except OSError as exc:
        pytest.fail(str(exc), pytrace=False)
    with started:
        yield started.port
