"""websockets: one server's own options (``server_options``), and servers started before ``instrument()``.

Wire behaviour is read with the bare client of ``tests/peers/bare.py``, in its own un-instrumented process:
it offers nothing, strips nothing, and returns every reply byte for byte.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.trace import SpanKind
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.sync.client import connect as sync_connect
from websockets.sync.server import serve as sync_serve

from tests.conftest import Telemetry
from tests.instrumentation.contract import parent_id, span_id, trace_id
from wstrace.envelope import BINARY_MAGIC, TEXT_MAGIC, decode
from wstrace.exceptions import ConfigError
from wstrace.instrumentation.websockets import WebsocketsInstrumentor, server_options
from wstrace.instrumentation.websockets._options import ServerOptions


BareClient = Callable[[str, list[str | bytes]], list[str | bytes]]
PAYLOADS: list[str | bytes] = ["hello", b"\x00\x01binary"]


@pytest.fixture
def instrument(telemetry: Telemetry) -> Iterator[Callable[..., None]]:
    instrumentor = WebsocketsInstrumentor()

    def do(**options: Any) -> None:
        options.setdefault("tracer_provider", telemetry.provider)
        instrumentor.instrument(**options)

    yield do
    instrumentor.uninstrument()


async def echo(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


def sync_echo(ws: Any) -> None:
    for message in ws:
        ws.send(message)


@asynccontextmanager
async def aserver(path: str, **kwargs: Any) -> AsyncIterator[str]:
    async with serve(echo, "127.0.0.1", 0, **kwargs) as srv:
        yield f"ws://127.0.0.1:{srv.sockets[0].getsockname()[1]}{path}"


@contextmanager
def sserver(path: str, **kwargs: Any) -> Iterator[str]:
    with sync_serve(sync_echo, "127.0.0.1", 0, **kwargs) as srv:
        thread = threading.Thread(target=srv.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"ws://127.0.0.1:{srv.socket.getsockname()[1]}{path}"
        finally:
            srv.shutdown()
            thread.join(5)


def server_handshake(telemetry: Telemetry, path: str) -> Any:
    found = [s for s in telemetry.named(f"GET {path}") if s.kind is SpanKind.SERVER]
    assert len(found) == 1, [s.name for s in telemetry.spans]
    return found[0]


def wait_closed(telemetry: Telemetry) -> None:
    for _ in range(100):  # a server thread records its close a moment after the client has gone
        if not telemetry.open_spans.names():
            return
        threading.Event().wait(0.02)


def assert_forced_and_negotiating(telemetry: Telemetry, forced: list[Any], plain: list[Any]) -> None:
    """The forced server enveloped its replies to a client that offered nothing; the other sent them as they are."""
    assert plain == PAYLOADS
    assert isinstance(forced[0], str) and forced[0].startswith(TEXT_MAGIC)
    assert isinstance(forced[1], bytes) and forced[1].startswith(BINARY_MAGIC)
    unwrapped = [decode(reply) for reply in forced]
    assert [d.payload for d in unwrapped] == PAYLOADS
    sends = {span_id(s): s for s in telemetry.named("send /forced")}
    for d in unwrapped:
        assert d.carrier is not None
        sent_by = int(d.carrier["traceparent"].split("-")[2], 16)
        assert sent_by in sends, "each envelope carries the context of the server's send span"
    assert server_handshake(telemetry, "/forced").attributes["websocket.envelope"] == "frame"
    assert server_handshake(telemetry, "/plain").attributes["websocket.envelope"] == "none"
    # Options not given keep instrument()'s: both servers use the connection model.
    for path in ("/forced", "/plain"):
        hs = server_handshake(telemetry, path)
        assert [parent_id(s) for s in telemetry.named(f"websocket {path}")] == [span_id(hs)]
        assert len(telemetry.named(f"receive {path}")) == 2


# Per-server options --------------------------------------------------------------


def test_two_asyncio_servers_one_forced_one_negotiating(
    telemetry: Telemetry, instrument: Callable[..., None], bare_client: BareClient
) -> None:
    """In one process, a server with envelope="always" envelopes its frames; one that negotiates does not."""
    instrument(model="connection", envelope="negotiate")

    async def scenario() -> tuple[list[Any], list[Any]]:
        async with (
            aserver("/forced", process_request=server_options(envelope="always")) as forced_url,
            aserver("/plain") as plain_url,
        ):
            forced = await asyncio.to_thread(bare_client, forced_url, PAYLOADS)
            plain = await asyncio.to_thread(bare_client, plain_url, PAYLOADS)
            await asyncio.sleep(0.05)  # let the servers see the clients go
        return forced, plain

    forced, plain = asyncio.run(scenario())
    assert_forced_and_negotiating(telemetry, forced, plain)
    assert telemetry.open_spans.names() == []


def test_two_sync_servers_one_forced_one_negotiating(
    telemetry: Telemetry, instrument: Callable[..., None], bare_client: BareClient
) -> None:
    """The same with the threaded implementation, here with envelope="always" set globally and negotiate per server."""
    instrument(model="connection", envelope="always")
    with (
        sserver("/forced") as forced_url,
        sserver("/plain", process_request=server_options(envelope="negotiate")) as plain_url,
    ):
        forced = bare_client(forced_url, PAYLOADS)
        plain = bare_client(plain_url, PAYLOADS)
        wait_closed(telemetry)
    assert_forced_and_negotiating(telemetry, forced, plain)
    assert telemetry.open_spans.names() == []


def test_application_hook_runs_first_and_still_rejects(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """The application's own process_request runs inside the handshake span and its answer stands."""
    instrument()
    inside: list[int] = []

    async def check_token(connection: ServerConnection, request: Any) -> Any:
        inside.append(trace.get_current_span().get_span_context().span_id)
        if "token" not in request.path:
            return connection.respond(403, "no token")
        return None

    async def scenario() -> None:
        async with aserver("/chat", process_request=server_options(check_token, trust="ignore")) as url:
            with pytest.raises(Exception, match="403"):
                await connect(url)
            headers = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
            async with connect(url + "?token=1", additional_headers=headers) as ws:
                await ws.send("hi")
                assert await ws.recv() == "hi"

    asyncio.run(scenario())
    handshakes = sorted(
        (s for s in telemetry.named("GET /chat") if s.kind is SpanKind.SERVER),
        key=lambda s: s.start_time or 0,
    )
    assert [s.attributes["http.response.status_code"] for s in handshakes] == [403, 101]
    assert inside == [span_id(s) for s in handshakes]
    # trust="ignore" for this server: the client's traceparent is not continued.
    assert trace_id(handshakes[1]) != 0x0AF7651916CD43DD8448EB211C80319C


def test_hook_is_the_application_hook_when_not_instrumented() -> None:
    """Without instrumentation, server_options() is a plain process_request that calls the application's."""
    calls: list[str] = []

    def check_token(connection: Any, request: Any) -> Any:
        calls.append(request.path)
        return connection.respond(403, "no token")

    async def scenario() -> None:
        async with aserver("/chat", process_request=server_options(check_token, envelope="always")) as url:
            with pytest.raises(Exception, match="403"):
                await connect(url)
        async with aserver("/chat", process_request=server_options(envelope="always")) as url, connect(url) as ws:
            await ws.send("hi")
            assert await ws.recv() == "hi"

    asyncio.run(scenario())
    assert calls == ["/chat"]


def test_metrics_for_one_server_only(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """metrics=True for one server while instrument() turned metrics off: only that server records, to the
    meter provider given to instrument()."""
    reader = InMemoryMetricReader()
    instrument(metrics=False, meter_provider=MeterProvider(metric_readers=[reader]))

    async def scenario() -> None:
        async with (
            aserver("/metered", process_request=server_options(metrics=True)) as metered,
            aserver("/quiet") as quiet,
        ):
            for url in (metered, quiet):
                async with connect(url) as ws:
                    await ws.send("hi")
                    assert await ws.recv() == "hi"
            await asyncio.sleep(0.05)

    asyncio.run(scenario())
    routes: dict[str, set[Any]] = {}
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    routes.setdefault(metric.name, set()).add(
                        (point.attributes.get("http.route"), point.attributes.get("websocket.side"))
                    )
    assert ("/metered", "server") in routes["wstrace.connection.duration"]
    assert {route for route, _ in routes["wstrace.connection.duration"]} == {"/metered"}
    assert {side for _, side in routes["wstrace.connection.duration"]} == {"server"}


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: server_options(envelope="sometimes"), r"^envelope: expected one of"),
        (lambda: server_options(model="per-frame"), r"^model: "),
        (lambda: server_options(handshake_sources="headers,cookies"), r"^handshake_sources: "),
        (lambda: server_options(routes="chat"), r"^routes: "),
        (lambda: server_options(bogus=1), r"unknown wstrace option\(s\): bogus"),
        (lambda: server_options(tracer_provider=object()), r"unknown wstrace option\(s\): tracer_provider"),
        (lambda: server_options("not a hook"), r"^process_request: expected a callable"),  # type: ignore[arg-type]
    ],
)
def test_bad_options_raise_at_the_call(call: Callable[[], Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        call()


def test_none_and_nesting() -> None:
    """None means not given; options wrapped twice merge, the outer call's winning."""
    inner = server_options(envelope="always", trust="link", model=None)
    outer = server_options(inner, trust="ignore")
    assert isinstance(inner, ServerOptions) and isinstance(outer, ServerOptions)
    assert inner.overrides == {"envelope": "always", "trust": "link"}
    assert outer.overrides == {"envelope": "always", "trust": "ignore"}
    assert outer.hook is None


# Late instrumentation --------------------------------------------------------------


def test_asyncio_server_started_before_instrument(
    telemetry: Telemetry, instrument: Callable[..., None], bare_client: BareClient
) -> None:
    """instrument() after serve(): connections accepted afterwards are traced, with the server's own options."""

    async def scenario() -> tuple[list[Any], list[Any]]:
        async with (
            aserver("/forced", process_request=server_options(envelope="always")) as forced_url,
            aserver("/plain") as plain_url,
        ):
            instrument()
            forced = await asyncio.to_thread(bare_client, forced_url, PAYLOADS)
            plain = await asyncio.to_thread(bare_client, plain_url, PAYLOADS)
            async with connect(plain_url) as ws:  # an instrumented client negotiates with the early server
                await ws.send("hi")
                assert await ws.recv() == "hi"
            await asyncio.sleep(0.05)
        return forced, plain

    forced, plain = asyncio.run(scenario())
    assert isinstance(forced[0], str) and forced[0].startswith(TEXT_MAGIC)
    assert plain == PAYLOADS
    assert server_handshake(telemetry, "/forced").attributes["websocket.envelope"] == "frame"
    plain_handshakes = [s for s in telemetry.named("GET /plain") if s.kind is SpanKind.SERVER]
    assert sorted(s.attributes["websocket.envelope"] for s in plain_handshakes) == ["frame", "none"]
    assert_envelope_both_ways(telemetry, "/plain")
    assert telemetry.open_spans.names() == []


def test_sync_server_started_before_instrument(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """The same for a sync server: it accepts in a thread started before instrument(), its handshakes run after."""
    with sserver("/sync") as url:
        instrument()
        with sync_connect(url) as ws:
            ws.send("hi")
            assert ws.recv() == "hi"
        wait_closed(telemetry)
    assert server_handshake(telemetry, "/sync").attributes["websocket.envelope"] == "frame"
    assert_envelope_both_ways(telemetry, "/sync")
    assert len(telemetry.named("close /sync")) == 2
    assert telemetry.open_spans.names() == []


def assert_envelope_both_ways(telemetry: Telemetry, path: str) -> None:
    """The one enveloped exchange on ``path``: each receive span is the child of the other end's send span."""
    sends = {span_id(s) for s in telemetry.named(f"send {path}")}
    continued = [s for s in telemetry.named(f"receive {path}") if parent_id(s) in sends]
    assert len(continued) == 2, "client to server and back, both through the envelope"
