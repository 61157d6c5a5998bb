"""Django Channels: consumers through the ASGI layer, and context through channel layers, across processes.

Real parts only: uvicorn (in a thread, and in peer processes), daphne (a peer process), a real redis-server
(``redis_port``), ``channels_redis``' core and pub/sub layers, and the project's instrumented ``websockets``
client. The peer processes (``tests/peers/channels_server.py``) print their spans through the SDK's console
exporter and each channel-layer event their handlers received.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind
from websockets.asyncio.client import connect

from tests.conftest import Telemetry
from tests.instrumentation import channels_app, uvicorn_server
from tests.instrumentation.conftest import PeerProcess, peer_env
from tests.instrumentation.contract import parent_id, span_id, trace_id
from wstrace.config import Config
from wstrace.exceptions import ConfigError
from wstrace.instrumentation._instrumentor import Settings
from wstrace.instrumentation.channels import GROUP_SPANS_ENV, ChannelsInstrumentor, group_spans
from wstrace.instrumentation.channels._layers import KEY, Layers
from wstrace.instrumentation.websockets import WebsocketsInstrumentor


ROOT = Path(__file__).resolve().parents[2]
SERVER = ROOT / "tests" / "peers" / "channels_server.py"
CHAT = "ws/chat/<str:room>/"
SENT = {"type": "chat.message", "text": "hello", "extra": channels_app.EXTRA}
"""The event the consumers' ``broadcast:hello`` sends to their group."""


# Helpers --------------------------------------------------------------------------------------------------


def _by_name(spans: list[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def _one(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    found = _by_name(spans, name)
    assert len(found) == 1, f"expected one {name!r}, got {sorted(s.name for s in spans)}"
    return found[0]


def _id(value: str | None) -> int | None:
    return int(value, 16) if value else None


def _named(spans: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [s for s in spans if s["name"] == name]


def _sid(span: dict[str, Any]) -> int:
    return int(span["context"]["span_id"], 16)


def _tid(span: dict[str, Any]) -> int:
    return int(span["context"]["trace_id"], 16)


@contextmanager
def peer(server: str, layer: str, port: int, *, bare: bool = False, **env: str) -> Iterator[PeerProcess]:
    """The Channels test project under ``server`` in a process of its own."""
    args = [sys.executable, str(SERVER), server, layer, str(port), *(["bare"] if bare else [])]
    process = PeerProcess(args, peer_env({"PYTHONPATH": f"{ROOT / 'src'}:{ROOT}", **env}))
    try:
        process.wait_for("listening")
        yield process
    finally:
        process.stop()


def base_url(process: PeerProcess) -> str:
    return f"ws://127.0.0.1:{process.wait_for('listening')['port']}"


def layer_events(process: PeerProcess, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The first ``count`` channel-layer events the peer's handlers received (waits for them)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = [e for e in process.events() if e["event"] == "layer-event"]
        if len(events) >= count:
            return events
        time.sleep(0.02)
    raise AssertionError(f"expected {count} layer events:\n" + "\n".join(process.lines))


def peer_spans(process: PeerProcess, wait_for: str) -> list[dict[str, Any]]:
    """Every span the peer exported, once a span named ``wait_for`` is among them (the close ends last)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any(f'"{wait_for}"' in line for line in process.lines):
        time.sleep(0.05)
    spans = process.exported_spans()
    assert spans, "the peer exported no span:\n" + "\n".join(process.lines)
    return spans


def make_layer(kind: str, port: int) -> Any:
    """A channel layer of this (test) process, on the same Redis as the peers."""
    if kind == "redis":
        from channels_redis.core import RedisChannelLayer  # noqa: PLC0415

        return RedisChannelLayer(hosts=[channels_app.layer_config("redis", port)["CONFIG"]["hosts"][0]])
    from channels_redis.pubsub import RedisPubSubChannelLayer  # noqa: PLC0415

    return RedisPubSubChannelLayer(hosts=[channels_app.layer_config("pubsub", port)["CONFIG"]["hosts"][0]])


async def close_layer(layer: Any) -> None:
    close = getattr(layer, "close_pools", None) or layer.flush
    await close()


@pytest.fixture
def channels(telemetry: Telemetry) -> Iterator[ChannelsInstrumentor]:
    """Channels instrumented in this process (the in-memory layer, Django configured here)."""
    channels_app.use_layer("memory")
    channels_app.EVENTS.clear()
    instrumentor = ChannelsInstrumentor()
    instrumentor.instrument(tracer_provider=telemetry.provider)
    yield instrumentor
    instrumentor.uninstrument()


@pytest.fixture
def client(telemetry: Telemetry) -> Iterator[None]:
    """The project's instrumented ``websockets`` client, in this process."""
    instrumentor = WebsocketsInstrumentor()
    instrumentor.instrument(tracer_provider=telemetry.provider)
    yield
    instrumentor.uninstrument()


# One process: consumers, routes, handler contexts, the in-memory layer ----------------------------------------


def test_consumers_route_templates_and_message_spans(telemetry: Telemetry, channels: ChannelsInstrumentor) -> None:
    """Each consumer kind's handshake and message spans carry the URLRouter's template, never the path; a
    handler's reply is the reply stream of the message it handles (a child of its receive span)."""
    app = channels_app.build()
    with uvicorn_server.serve(app) as base:

        async def exchange() -> list[Any]:
            got = []
            for path, payload in (("/ws/chat/lobby/", "hi"), ("/ws/sync/abc/", "hi"), ("/ws/json/7/", '{"a": 1}')):
                async with connect(base + path) as ws:
                    await ws.send(payload)
                    got.append(await asyncio.wait_for(ws.recv(), 10))
            return got

        assert asyncio.run(exchange()) == ["echo:hi", "echo:hi", '{"echo": {"a": 1}}']
        uvicorn_server.settle(telemetry)
    spans = telemetry.spans
    for route in (CHAT, r"^ws/sync/(?P<name>\w+)/$", "ws/json/<int:n>/"):
        handshake = _one(spans, f"GET {route}")
        assert handshake.kind is SpanKind.SERVER
        assert (handshake.attributes or {})["http.route"] == route
        assert (handshake.attributes or {})["url.path"].startswith("/ws/")
        receive = _one(spans, f"receive {route}")
        reply = _one(spans, f"send {route}")
        assert parent_id(reply) == span_id(receive), f"{route}: the reply is not the handled message's"
    assert not [s.name for s in spans if "/lobby/" in s.name or "/abc/" in s.name or "/7/" in s.name]
    assert telemetry.open_spans.names() == []


@pytest.mark.parametrize("path", ["/ws/chat/lobby/", "/ws/sync/lobby/"])
def test_group_send_in_one_process(telemetry: Telemetry, channels: ChannelsInstrumentor, path: str) -> None:
    """receive → ``send <group>`` (PRODUCER) → ``process <group>`` (CONSUMER, the handler) → the WebSocket
    message it pushes, in one trace; the handler gets the event exactly as it was sent."""
    app = channels_app.build()
    with uvicorn_server.serve(app) as base:

        async def exchange() -> Any:
            async with connect(base + path) as ws:
                await ws.send("broadcast:hello")
                return await asyncio.wait_for(ws.recv(), 10)

        assert asyncio.run(exchange()) == "hello"
        uvicorn_server.settle(telemetry)
    assert channels_app.EVENTS == [SENT], "the handler got something else than was sent"
    group = "chat_lobby" if "chat" in path else "sync_lobby"
    route = CHAT if "chat" in path else r"^ws/sync/(?P<name>\w+)/$"
    spans = telemetry.spans
    receive = _one(spans, f"receive {route}")
    produce = _one(spans, f"send {group}")
    process = _one(spans, f"process {group}")
    push = _one(spans, f"send {route}")
    assert produce.kind is SpanKind.PRODUCER and process.kind is SpanKind.CONSUMER
    assert dict(produce.attributes or {}) == {
        "messaging.system": "django_channels",
        "messaging.operation.type": "send",
        "messaging.operation.name": "group_send",
        "messaging.destination.name": group,
        "messaging.django_channels.event_type": "chat.message",
    }
    attributes = process.attributes or {}
    assert attributes["messaging.system"] == "django_channels"
    assert attributes["messaging.operation.type"] == "process"
    assert attributes["messaging.destination.name"] == group
    assert attributes["messaging.django_channels.event_type"] == "chat.message"
    assert parent_id(produce) == span_id(receive)
    assert parent_id(process) == span_id(produce)
    assert parent_id(push) == span_id(process), "the pushed message is not the handler's"
    assert len({trace_id(s) for s in (receive, produce, process, push)}) == 1


def test_trust_link_starts_a_trace_linked_to_the_sender(telemetry: Telemetry) -> None:
    """Under ``trust="link"`` the handler's span is the root of a new trace, linked to the sender's span."""
    channels_app.use_layer("memory")
    channels_app.EVENTS.clear()
    instrumentor = ChannelsInstrumentor()
    instrumentor.instrument(tracer_provider=telemetry.provider, trust="link")
    try:
        with uvicorn_server.serve(channels_app.build()) as base:

            async def exchange() -> Any:
                async with connect(base + "/ws/chat/lobby/") as ws:
                    await ws.send("broadcast:hello")
                    return await asyncio.wait_for(ws.recv(), 10)

            assert asyncio.run(exchange()) == "hello"
            uvicorn_server.settle(telemetry)
    finally:
        instrumentor.uninstrument()
    produce = _one(telemetry.spans, "send chat_lobby")
    process = _one(telemetry.spans, "process chat_lobby")
    assert process.parent is None and trace_id(process) != trace_id(produce)
    assert [link.context.span_id for link in process.links] == [span_id(produce)]
    assert channels_app.EVENTS == [SENT]


def test_layer_send_never_changes_the_applications_dict(telemetry: Telemetry, channels: ChannelsInstrumentor) -> None:
    """``send`` hands the layer a copy with the carrier; the application's dict is untouched. Code that calls
    ``receive`` on the layer itself (not a consumer) sees the key, as a process without wstrace would."""
    from channels.layers import InMemoryChannelLayer  # noqa: PLC0415

    layer = InMemoryChannelLayer()
    event = {"type": "work.item", "n": 1}

    async def roundtrip() -> Any:
        await layer.send("jobs", event)
        return await layer.receive("jobs")

    received = asyncio.run(roundtrip())
    assert event == {"type": "work.item", "n": 1}, "the application's dict was changed"
    produce = _one(telemetry.spans, "send jobs")
    assert set(received) == {"type", "n", KEY}
    assert received[KEY]["destination"] == "jobs"
    assert received[KEY]["traceparent"].split("-")[2] == f"{span_id(produce):016x}"


def test_off_switch_sends_no_carrier(telemetry: Telemetry, monkeypatch: pytest.MonkeyPatch) -> None:
    """``WSTRACE_CHANNELS_LAYER_CARRIER=false``: the send span is made, the event goes as it is."""
    from channels.layers import InMemoryChannelLayer  # noqa: PLC0415

    channels_app.use_layer("memory")
    monkeypatch.setenv("WSTRACE_CHANNELS_LAYER_CARRIER", "false")
    instrumentor = ChannelsInstrumentor()
    instrumentor.instrument(tracer_provider=telemetry.provider)
    try:
        layer = InMemoryChannelLayer()

        async def roundtrip() -> Any:
            await layer.send("jobs", {"type": "work.item"})
            return await layer.receive("jobs")

        assert asyncio.run(roundtrip()) == {"type": "work.item"}
    finally:
        instrumentor.uninstrument()
    assert _one(telemetry.spans, "send jobs").kind is SpanKind.PRODUCER


# Across processes: two servers behind a real Redis -------------------------------------------------------------


@pytest.mark.parametrize("layer", ["redis", "pubsub"])
def test_group_send_across_two_server_processes(
    telemetry: Telemetry, client: None, redis_port: int, layer: str
) -> None:
    """Client → server A's consumer → ``group_send`` through Redis → two consumers on server B → their
    clients: one trace, from the client's send to each client's receive. B's handlers get the event exactly
    as A sent it (the same dict handed to two consumers of one process is never changed)."""
    with peer("uvicorn", layer, redis_port) as a, peer("uvicorn", layer, redis_port) as b:
        url_a, url_b = base_url(a) + "/ws/chat/room/", base_url(b) + "/ws/chat/room/"

        async def exchange() -> list[Any]:
            async with connect(url_a) as ws_a, connect(url_b) as b1, connect(url_b) as b2:
                await ws_a.send("broadcast:hello")
                return [await asyncio.wait_for(ws.recv(), 10) for ws in (ws_a, b1, b2)]

        assert asyncio.run(exchange()) == ["hello"] * 3
        events_b = layer_events(b, 2)
        spans_a = peer_spans(a, f"close {CHAT}")
        spans_b = peer_spans(b, f"close {CHAT}")
    assert [e["body"] for e in events_b] == [SENT, SENT], "B's handlers got something else than A sent"

    client_send = next(s for s in telemetry.spans if s.kind is SpanKind.PRODUCER)
    receive_a = _named(spans_a, f"receive {CHAT}")
    assert len(receive_a) == 1 and _id(receive_a[0]["parent_id"]) == span_id(client_send)
    (produce,) = _named(spans_a, "send chat_room")
    assert produce["kind"] == "SpanKind.PRODUCER" and _id(produce["parent_id"]) == _sid(receive_a[0])
    processes = _named(spans_b, "process chat_room")
    assert len(processes) == 2 and all(_id(p["parent_id"]) == _sid(produce) for p in processes)
    assert sorted(e["span_id"] for e in events_b) == sorted(p["context"]["span_id"] for p in processes)
    pushes = _named(spans_b, f"send {CHAT}")
    assert len(pushes) == 2 and {_id(p["parent_id"]) for p in pushes} == {_sid(p) for p in processes}
    # B's pushes reach the clients through the negotiated envelope: the clients' receives are their children.
    client_receives = [s for s in telemetry.spans if s.kind is SpanKind.CONSUMER]
    on_b = [s for s in client_receives if parent_id(s) in {_sid(p) for p in pushes}]
    assert len(on_b) == 2
    traces = {_tid(s) for s in (*receive_a, produce, *processes, *pushes)} | {trace_id(s) for s in on_b}
    assert traces == {trace_id(client_send)}, "the hop through Redis broke the trace"


@pytest.mark.parametrize("layer", ["redis", "pubsub"])
def test_sender_outside_a_consumer_and_bare_and_bad_carriers(
    telemetry: Telemetry, client: None, redis_port: int, layer: str
) -> None:
    """Sent from this process to server B's group: by an instrumented sender (B's handler continues its
    trace), by a bare one (delivered untouched, a trace of B's own), and with malformed, oversized or foreign
    values under the carrier key (delivered exactly as sent, key included, each in a fresh trace)."""
    bad_values: list[Any] = [
        "00-0123456789abcdef0123456789abcdef-0123456789abcdef-01",  # a string, not a carrier
        {"traceparent": "garbage"},  # the shape, but no valid context
        {"traceparent": 7},  # a value that is not a string
        {"traceparent": "00-0123456789abcdef0123456789abcdef-0123456789abcdef-01", "x": "y" * 9000},  # oversized
        {f"k{i}": "v" for i in range(40)},  # too many entries
        ["traceparent"],
    ]
    with peer("uvicorn", layer, redis_port) as b:
        url_b = base_url(b) + "/ws/chat/room/"
        sender = make_layer(layer, redis_port)

        # One connection for every exchange: a consumer that closes while the next event is sent can lose it
        # inside channels_redis (its shared receive is cancelled between popping a message and backing it up).
        async def exchange(ws: Any, event: dict[str, Any]) -> Any:
            await sender.group_send("chat_room", event)
            return await asyncio.wait_for(ws.recv(), 10)

        async def run_all() -> list[Any]:
            async with connect(url_b) as ws:
                got = [await exchange(ws, dict(SENT, text="bare"))]  # not instrumented here yet
                instrumentor = ChannelsInstrumentor()
                instrumentor.instrument(tracer_provider=telemetry.provider)
                try:
                    got.append(await exchange(ws, dict(SENT, text="traced")))
                    for i, value in enumerate(bad_values):
                        got.append(await exchange(ws, {"type": "chat.message", "text": f"bad{i}", KEY: value}))
                finally:
                    instrumentor.uninstrument()
                    await close_layer(sender)
            return got

        assert asyncio.run(run_all()) == ["bare", "traced", *(f"bad{i}" for i in range(len(bad_values)))]
        events = layer_events(b, 2 + len(bad_values))
        spans_b = peer_spans(b, f"close {CHAT}")
    bodies = [e["body"] for e in events]
    assert bodies[0] == dict(SENT, text="bare") and bodies[1] == dict(SENT, text="traced")
    for i, value in enumerate(bad_values):
        assert bodies[2 + i] == {"type": "chat.message", "text": f"bad{i}", KEY: value}, f"bad carrier {i} changed"
    processes = {e["span_id"]: e for e in events}
    by_id = {s["context"]["span_id"]: s for s in _named(spans_b, "process chat_room") + _named(spans_b, "process")}
    assert set(by_id) == set(processes), "every event is handled in a process span"
    # A send span each (the bad ones carry no context of ours: their key was the application's); the first
    # is the traced event's.
    sends = sorted(_by_name(telemetry.spans, "send chat_room"), key=lambda s: s.start_time or 0)
    assert len(sends) == 1 + len(bad_values)
    produce = sends[0]
    handled = {e["body"]["text"]: by_id[e["span_id"]] for e in events}
    assert _id(handled["traced"]["parent_id"]) == span_id(produce)
    assert int(handled["traced"]["context"]["trace_id"], 16) == trace_id(produce)
    for text, span in handled.items():
        if text != "traced":
            assert span["parent_id"] is None and not span["links"], f"{text}: not a fresh trace"


def test_a_consumer_without_wstrace_sees_the_carrier(telemetry: Telemetry, redis_port: int) -> None:
    """A consumer process without wstrace gets the carrier key (documented); with the carrier off, nothing."""
    with peer("uvicorn", "redis", redis_port, bare=True) as b:
        url_b = base_url(b) + "/ws/chat/room/"
        sender = make_layer("redis", redis_port)

        async def run_all() -> None:
            async with connect(url_b) as ws:  # one connection, as above
                for carrier in (True, False):
                    instrumentor = ChannelsInstrumentor()
                    instrumentor.instrument(tracer_provider=telemetry.provider, layer_carrier=carrier)
                    try:
                        await sender.group_send("chat_room", dict(SENT, text=f"carrier={carrier}"))
                        await asyncio.wait_for(ws.recv(), 10)
                    finally:
                        instrumentor.uninstrument()
            await close_layer(sender)

        asyncio.run(run_all())
        events = layer_events(b, 2)
    with_carrier, without = (e["body"] for e in events)
    assert set(with_carrier) == {*SENT, KEY} and set(with_carrier[KEY]) == {"traceparent", "destination"}
    assert without == dict(SENT, text="carrier=False")


@pytest.mark.parametrize("server", ["daphne", "uvicorn"])
def test_served_by_daphne_and_uvicorn(telemetry: Telemetry, client: None, redis_port: int, server: str) -> None:
    """Both servers: handshake with the route template, message spans, a broadcast pushed under its handler's
    span. daphne drops ``websocket.accept``'s headers, so the envelope stays off there (docs/adapters/asgi.md);
    handshake context still travels in the request headers."""
    with peer(server, "redis", redis_port) as b:
        url = base_url(b) + "/ws/chat/room/"

        async def exchange() -> list[Any]:
            async with connect(url) as ws:
                await ws.send("hi")
                echo = await asyncio.wait_for(ws.recv(), 10)
                await ws.send("broadcast:hello")
                return [echo, await asyncio.wait_for(ws.recv(), 10)]

        assert asyncio.run(exchange()) == ["echo:hi", "hello"]
        assert [e["body"] for e in layer_events(b, 1)] == [SENT]
        spans = peer_spans(b, f"close {CHAT}")
    (handshake,) = _named(spans, f"GET {CHAT}")
    assert handshake["attributes"]["http.route"] == CHAT
    client_handshake = next(s for s in telemetry.spans if s.kind is SpanKind.CLIENT)
    assert _id(handshake["parent_id"]) == span_id(client_handshake)
    envelope = (client_handshake.attributes or {})["websocket.envelope"]
    assert envelope == ("none" if server == "daphne" else "frame")
    assert handshake["attributes"]["websocket.envelope"] == envelope
    receives = _named(spans, f"receive {CHAT}")
    (produce,) = _named(spans, "send chat_room")
    (process,) = _named(spans, "process chat_room")
    pushes = _named(spans, f"send {CHAT}")
    assert len(receives) == 2 and _id(produce["parent_id"]) == _sid(receives[1])
    assert _id(process["parent_id"]) == _sid(produce)
    assert {_id(p["parent_id"]) for p in pushes} == {_sid(receives[0]), _sid(process)}


def test_connection_model_and_inside_the_opentelemetry_asgi_server_span(telemetry: Telemetry) -> None:
    """``model="connection"``: one trace per connection, a broadcast's push included, under the connection span;
    with OpenTelemetry's ASGI middleware outside, wstrace's handshake span is a child of its SERVER span."""
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware  # noqa: PLC0415

    channels_app.use_layer("memory")
    channels_app.EVENTS.clear()
    instrumentor = ChannelsInstrumentor()
    instrumentor.instrument(tracer_provider=telemetry.provider, model="connection")
    try:
        app = OpenTelemetryMiddleware(
            channels_app.build(), tracer_provider=telemetry.provider, exclude_spans=["receive", "send"]
        )
        with uvicorn_server.serve(app) as base:

            async def exchange() -> list[Any]:
                async with connect(base + "/ws/chat/lobby/") as ws:
                    await ws.send("hi")
                    echo = await asyncio.wait_for(ws.recv(), 10)
                    await ws.send("broadcast:hello")
                    return [echo, await asyncio.wait_for(ws.recv(), 10)]

            assert asyncio.run(exchange()) == ["echo:hi", "hello"]
            uvicorn_server.settle(telemetry)
    finally:
        instrumentor.uninstrument()
    spans = telemetry.spans
    (outer,) = [s for s in spans if s.kind is SpanKind.SERVER and s.name != f"GET {CHAT}"]
    handshake = _one(spans, f"GET {CHAT}")
    assert parent_id(handshake) == span_id(outer)
    connection = _one(spans, f"websocket {CHAT}")
    assert parent_id(connection) == span_id(handshake)
    receives = _by_name(spans, f"receive {CHAT}")
    assert len(receives) == 2 and all(parent_id(r) == span_id(connection) for r in receives)
    process = _one(spans, "process chat_lobby")
    assert parent_id(process) == span_id(_one(spans, "send chat_lobby"))
    # The connection span, current where the event was dispatched, is linked, never the parent.
    assert [(link.context.span_id, (link.attributes or {}).get("wstrace.link.kind")) for link in process.links] == [
        (span_id(connection), "ambient")
    ]
    pushes = _by_name(spans, f"send {CHAT}")
    assert span_id(process) in {parent_id(p) for p in pushes}
    assert len({trace_id(s) for s in spans}) == 1, "connection model: one trace"


# group_spans: one process span per recipient (each), or per group message and process (first) ----------------


def test_group_spans_option_keyword_and_variable(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The keyword wins and a bad one raises; the variable applies when there is no keyword, and a bad one is
    logged and ignored; the default is ``each``."""
    assert group_spans() == "each"
    assert group_spans(" First ") == "first"
    with pytest.raises(ConfigError, match="group_spans"):
        group_spans("all")
    with pytest.raises(ConfigError, match="group_spans"):
        group_spans(True)
    assert group_spans(environ={GROUP_SPANS_ENV: "first"}) == "first"
    assert group_spans("each", environ={GROUP_SPANS_ENV: "first"}) == "each"
    with caplog.at_level(logging.WARNING, logger="wstrace"):
        assert group_spans(environ={GROUP_SPANS_ENV: "bogus-value-for-the-test"}) == "each"
    assert "bogus-value-for-the-test" in caplog.text
    monkeypatch.setenv(GROUP_SPANS_ENV, "first")
    assert group_spans() == "first"


@pytest.mark.parametrize("mode", ["each", "first"])
def test_group_spans_in_one_process(telemetry: Telemetry, mode: str) -> None:
    """A broadcast to three consumers of one process through the in-memory layer (each gets a copy of its own):
    ``each``, three ``process`` spans; ``first``, one, and the other two handler calls run in its context (their
    pushes are its children). Every handler gets the event exactly as it was sent."""
    channels_app.use_layer("memory")
    channels_app.EVENTS.clear()
    instrumentor = ChannelsInstrumentor()
    instrumentor.instrument(tracer_provider=telemetry.provider, group_spans=mode)
    try:
        with uvicorn_server.serve(channels_app.build()) as base:

            async def exchange() -> list[Any]:
                url = base + "/ws/chat/lobby/"
                async with connect(url) as ws, connect(url) as other, connect(url) as third:
                    await ws.send("broadcast:hello")
                    return [await asyncio.wait_for(w.recv(), 10) for w in (ws, other, third)]

            assert asyncio.run(exchange()) == ["hello"] * 3
            uvicorn_server.settle(telemetry)
    finally:
        instrumentor.uninstrument()
    assert channels_app.EVENTS == [SENT] * 3, "a handler got something else than was sent"
    spans = telemetry.spans
    produce = _one(spans, "send chat_lobby")
    processes = _by_name(spans, "process chat_lobby")
    assert len(processes) == (3 if mode == "each" else 1)
    assert all(parent_id(p) == span_id(produce) for p in processes)
    pushes = _by_name(spans, f"send {CHAT}")
    assert len(pushes) == 3
    if mode == "each":
        assert {parent_id(p) for p in pushes} == {span_id(p) for p in processes}
    else:
        assert {parent_id(p) for p in pushes} == {span_id(processes[0])}
    assert len({trace_id(s) for s in (produce, *processes, *pushes)}) == 1


@pytest.mark.parametrize("mode", ["each", "first"])
@pytest.mark.parametrize("layer", ["redis", "pubsub"])
def test_group_spans_across_processes(telemetry: Telemetry, redis_port: int, layer: str, mode: str) -> None:
    """A ``group_send`` from this process to three consumers of server B (``WSTRACE_CHANNELS_GROUP_SPANS``),
    through a real redis-server: with ``first``, B makes one ``process`` span for the three handler calls, each
    of which runs in its context; with ``each``, one per handler call. Traced and un-instrumented sends alike
    reach every handler exactly as they were sent."""
    with peer("uvicorn", layer, redis_port, WSTRACE_CHANNELS_GROUP_SPANS=mode) as b:
        url_b = base_url(b) + "/ws/chat/room/"
        sender = make_layer(layer, redis_port)

        async def exchange(event: dict[str, Any]) -> list[Any]:
            async with connect(url_b) as one, connect(url_b) as two, connect(url_b) as three:
                await sender.group_send("chat_room", event)
                return [await asyncio.wait_for(ws.recv(), 10) for ws in (one, two, three)]

        async def run_all() -> list[Any]:
            got = await exchange(dict(SENT, text="bare"))  # not instrumented here yet
            instrumentor = ChannelsInstrumentor()
            instrumentor.instrument(tracer_provider=telemetry.provider)
            try:
                got += await exchange(dict(SENT, text="traced"))
            finally:
                instrumentor.uninstrument()
                await close_layer(sender)
            return got

        assert asyncio.run(run_all()) == ["bare"] * 3 + ["traced"] * 3
        events = layer_events(b, 6)
        spans_b = peer_spans(b, f"close {CHAT}")
    bodies = [e["body"] for e in events]
    assert bodies == [dict(SENT, text="bare")] * 3 + [dict(SENT, text="traced")] * 3
    produce = _one(telemetry.spans, "send chat_room")
    traced = [e for e in events if e["body"]["text"] == "traced"]
    processes = [p for p in _named(spans_b, "process chat_room") if _id(p["parent_id"]) == span_id(produce)]
    assert len(processes) == (3 if mode == "each" else 1)
    assert sorted({e["span_id"] for e in traced}) == sorted(p["context"]["span_id"] for p in processes)
    pushes = [p for p in _named(spans_b, f"send {CHAT}") if _id(p["parent_id"]) in {_sid(p) for p in processes}]
    assert len(pushes) == 3, "a handler call's push is not under the broadcast's process span"
    assert {_tid(s) for s in (*processes, *pushes)} == {trace_id(produce)}
    # The bare sender's event carries no context: each handler call in a trace of B's own, none in the sender's.
    bare = [e for e in events if e["body"]["text"] == "bare"]
    assert all(int(e["span_id"], 16) not in {_sid(p) for p in processes} for e in bare)


def test_first_joins_copies_of_a_carrier_only_when_exactly_ours(telemetry: Telemetry) -> None:
    """With ``group_spans="first"``, a copy of a carrier read a moment ago (the in-memory and pub/sub layers give
    each consumer its own dict) joins that span; a value equal to it but not made of plain strings is not a
    carrier: it stays in the event, whose handler runs in a trace of its own."""

    class Text(str):
        pass

    layers = Layers(Settings(telemetry.provider.get_tracer("test"), Config()), True, lambda: True, first=True)
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    odd = {"type": "job.done", "n": 1, KEY: {"traceparent": Text(traceparent), "destination": "jobs"}}
    opened = [
        layers.open({"type": "job.done", "n": 1, KEY: {"traceparent": traceparent, "destination": "jobs"}}),
        layers.open({"type": "job.done", "n": 1, KEY: {"traceparent": traceparent, "destination": "jobs"}}),
        layers.open(odd),
    ]
    for _, handling in reversed(opened):
        assert handling is not None
        handling.finish()
    (first, h1), (second, h2), (third, h3) = opened
    assert first == second == {"type": "job.done", "n": 1}
    assert third is odd and type(odd[KEY]["traceparent"]) is Text, "the look-alike was not left as it came"
    assert h1 is not None and h2 is not None and h3 is not None
    assert h1.span is not None and h2.span is None and h3.span is not None
    spans = telemetry.spans
    assert sorted(s.name for s in spans) == ["process", "process jobs"]
    assert f"{_one(spans, 'process jobs').context.trace_id:032x}" == traceparent.split("-")[1]
    assert _one(spans, "process").parent is None
