"""conftest.py for websocket-client's own tests, copied next to them by the upstream-test harness.

Their tests against a local server run only when ``LOCAL_WS_SERVER_PORT`` is set; upstream CI starts
``websocket/tests/echo-server.py`` (a websockets echo server) for them. This starts the same echo server, in a
thread of the test process on 127.0.0.1, so that the harness's instrumentation covers both ends: the
websocket-client adapter and the websockets server adapter.
"""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any

import pytest


def _serve(ready: threading.Event, port: list[int]) -> None:
    from websockets.asyncio.server import serve  # noqa: PLC0415 - after the plugin has instrumented

    async def echo(websocket: Any) -> None:
        async for message in websocket:
            await websocket.send(message)

    async def main() -> None:
        async with serve(echo, "127.0.0.1", 0) as server:
            port.append(next(iter(server.sockets)).getsockname()[1])
            ready.set()
            await asyncio.Future()

    asyncio.run(main())


def pytest_configure(config: pytest.Config) -> None:
    ready = threading.Event()
    port: list[int] = []
    threading.Thread(target=_serve, args=(ready, port), name="echo-server", daemon=True).start()
    if not ready.wait(10):
        raise RuntimeError("the echo server did not start")
    # Read by the test modules at import time, which comes after this.
    os.environ["LOCAL_WS_SERVER_PORT"] = str(port[0])
