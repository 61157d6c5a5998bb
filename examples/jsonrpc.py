"""JSON-RPC over one websockets connection: three calls in flight at once, answered out of order.

The client sends three requests without waiting (``{"jsonrpc": "2.0", "id": n, "method": ...}``, ids 1 to 3) and
a reader task hands each answer to its caller by id. The server answers every request from a task of its own,
so answers leave in the order they are ready: ``echo`` at once, ``slow`` after a while, and ``count`` streamed
as ``{"id": n, "partial": k}`` messages before its ``{"id": n, "result": ...}``. wstrace is told which request
an answer belongs to with ``stream_key`` (the ``id``) and where an answer ends with ``stream_end`` (a message
with a ``result`` or an ``error``). Each call is then one trace of four spans, whatever the interleaving: the
client's ``send`` (a root: a keyed request is a trace of its own), the server's ``receive``, the server's reply
stream (a ``send`` span counting the call's answer messages) and the client's receive stream of that answer.
Run it::

    python examples/jsonrpc.py

Spans are printed to the console. ``tests/examples/test_jsonrpc.py`` runs it over loopback and checks the
trace shape.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Hashable
from typing import Any, Optional

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve

from wstrace.instrumentation.websockets import WebsocketsInstrumentor


SLOW = 0.15
"""How long ``slow`` takes: its answer goes out between the chunks of ``count``."""
STEP = 0.1
"""The gap between the chunks of ``count``."""
CALLS = (("slow", "a"), ("count", 3), ("echo", "b"))
"""The calls the client makes at once (method, parameter): ids 1, 2 and 3."""


def request_id(payload: Any) -> Optional[Hashable]:
    """``stream_key``: the JSON-RPC id that pairs an answer with its request (``None`` for anything else)."""
    try:
        message = json.loads(payload)
    except ValueError:
        return None
    return message.get("id") if isinstance(message, dict) else None


def is_final(payload: Any) -> bool:
    """``stream_end``: an answer is complete with its ``result`` (or ``error``); ``partial`` messages precede it."""
    try:
        message = json.loads(payload)
    except ValueError:
        return False
    return isinstance(message, dict) and ("result" in message or "error" in message)


async def dispatch(ws: ServerConnection, request: dict[str, Any]) -> None:
    """Answer one request; it runs in a task of its own, so answers go out when they are ready."""
    method, param, rid = request["method"], request["params"], request["id"]
    if method == "echo":
        await ws.send(json.dumps({"jsonrpc": "2.0", "id": rid, "result": param}))
    elif method == "slow":
        await asyncio.sleep(SLOW)
        await ws.send(json.dumps({"jsonrpc": "2.0", "id": rid, "result": param.upper()}))
    elif method == "count":
        for k in range(1, param + 1):
            await asyncio.sleep(STEP)
            await ws.send(json.dumps({"jsonrpc": "2.0", "id": rid, "partial": k}))
        await ws.send(json.dumps({"jsonrpc": "2.0", "id": rid, "result": param}))
    else:
        error = {"code": -32601, "message": f"no method {method!r}"}
        await ws.send(json.dumps({"jsonrpc": "2.0", "id": rid, "error": error}))


async def server(ws: ServerConnection) -> None:
    """The server: each request is handled by its own task (which inherits the request's context)."""
    tasks: set[asyncio.Task[None]] = set()
    async for message in ws:
        task = asyncio.create_task(dispatch(ws, json.loads(message)))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


class Client:
    """A JSON-RPC client: ``call`` sends and waits for its own answer; one reader task dispatches answers by id."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.pending: dict[int, tuple[asyncio.Future[Any], list[Any]]] = {}
        self.finished: list[int] = []
        """Ids in the order their answers completed."""
        self.reader = asyncio.create_task(self.read())

    async def call(self, method: str, param: Any) -> tuple[list[Any], Any]:
        """Send a request and return its streamed partial results and its result."""
        rid = next(self.ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[rid] = (future, [])
        await self.ws.send(json.dumps({"jsonrpc": "2.0", "id": rid, "method": method, "params": param}))
        result = await future
        return self.pending.pop(rid)[1], result

    async def read(self) -> None:
        async for message in self.ws:
            answer = json.loads(message)
            future, partials = self.pending[answer["id"]]
            if "partial" in answer:
                partials.append(answer["partial"])
                continue
            self.finished.append(answer["id"])
            if "error" in answer:
                future.set_exception(RuntimeError(answer["error"]["message"]))
            else:
                future.set_result(answer["result"])


async def call_all(url: str) -> tuple[list[tuple[list[Any], Any]], list[int]]:
    """Make every call of ``CALLS`` at once; return the answers (in call order) and the order they completed."""
    async with connect(url) as ws:
        client = Client(ws)
        answers = await asyncio.gather(*(client.call(method, param) for method, param in CALLS))
    await client.reader
    return list(answers), client.finished


async def main(provider: trace.TracerProvider | None = None) -> tuple[list[tuple[list[Any], Any]], list[int]]:
    """Serve on a free loopback port, make the three calls, return the answers and the order they completed."""
    instrumentor = WebsocketsInstrumentor()
    instrumentor.instrument(tracer_provider=provider, stream_key=request_id, stream_end=is_final)
    try:
        async with serve(server, "127.0.0.1", 0) as srv:
            port = srv.sockets[0].getsockname()[1]
            result = await call_all(f"ws://127.0.0.1:{port}/rpc")
            await asyncio.sleep(0.05)  # the server's end sees the close
        return result
    finally:
        instrumentor.uninstrument()


if __name__ == "__main__":
    console = TracerProvider()
    console.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    answers, finished = asyncio.run(main(console))
    for (method, param), (partials, result) in zip(CALLS, answers, strict=True):
        print(f"{method}({param!r}) -> partials {partials}, result {result!r}")
    print("answers completed in the order of ids", finished)
