"""A websockets asyncio server in a background thread, for tests whose client blocks (websocket-client)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

from websockets.asyncio.server import ServerConnection, serve


__all__ = ["Handler", "ws_server"]

Handler = Callable[[ServerConnection], Awaitable[None]]


@contextmanager
def ws_server(handler: Handler, path: str = "/chat", **serve_options: Any) -> Iterator[str]:
    """A websockets asyncio server in a background thread with its own event loop.

    Leaving the block closes the server and waits for its connections, so every
    server-side span has ended when the test looks at them.
    """
    ready = threading.Event()
    state: dict[str, Any] = {}

    async def main() -> None:
        loop = asyncio.get_running_loop()
        state["loop"], state["stop"] = loop, loop.create_future()
        async with serve(handler, "127.0.0.1", 0, **serve_options) as srv:
            state["port"] = srv.sockets[0].getsockname()[1]
            ready.set()
            await state["stop"]

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(5), "the server did not start"
    try:
        yield f"ws://127.0.0.1:{state['port']}{path}"
    finally:
        state["loop"].call_soon_threadsafe(state["stop"].set_result, None)
        thread.join(10)
        assert not thread.is_alive(), "the server did not stop"
