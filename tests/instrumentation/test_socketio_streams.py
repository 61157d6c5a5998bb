"""Socket.IO streams: a run of emits of one event to one destination, answering one handled event, is one
``send`` stream span with the stream attributes and histograms, and the receiving end handles the events of one such
stream in one ``process`` receive stream span (``docs/adapters/socketio.md``, "Streams" and "The receiving end").

Real servers on loopback (``AsyncServer`` attached to aiohttp, the threaded ``Server`` as a WSGI app under
werkzeug) and real clients (``AsyncClient``, the threaded ``Client``), both ends instrumented.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import socketio
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind

from tests.conftest import Telemetry
from tests.instrumentation import contract
from tests.instrumentation.socketio_app import (
    Driver,
    aiohttp_server,
    instrumenting,
    parent,
    run,
    sid,
    span_id_now,
    tid,
    until_received,
    wait_for as threaded_wait,
    wsgi_server,
)
from wstrace.instrumentation.socketio import SocketioInstrumentor


TOKENS = 20


@pytest.fixture
def instrument(telemetry: Telemetry) -> Iterator[Callable[..., None]]:
    yield from instrumenting(telemetry)


def streaming_server() -> socketio.AsyncServer:
    """``prompt`` answers with :data:`TOKENS` ``token`` emits, then one ``done``; ``acked`` emits three ``token``
    with an ack callback each; ``push`` starts a context-less task that emits three ``tick``."""
    sio = socketio.AsyncServer(async_mode="aiohttp")

    @sio.event
    async def prompt(sid_: str, text: str) -> None:
        for i in range(TOKENS):
            await sio.emit("token", f"{text}-{i}", to=sid_)
            await asyncio.sleep(0.001)
        await sio.emit("done", to=sid_)

    @sio.event
    async def acked(sid_: str) -> None:
        for i in range(3):
            await sio.emit("token", i, to=sid_, callback=lambda *args: None)

    return sio


def recording_client(received: list[tuple[str, Any, int]], tracer: Any = None) -> socketio.AsyncClient:
    """A client recording each event it handles: name, argument, and the span its handler ran in; with ``tracer``,
    each handler call makes a span of its own, ``handle {event}``."""
    client = socketio.AsyncClient(reconnection=False)

    @client.on("*")
    async def any_event(event: str, *args: Any) -> Any:
        received.append((event, args[0] if args else None, span_id_now()))
        if tracer is not None:
            with tracer.start_as_current_span(f"handle {event}"):
                await asyncio.sleep(0)
        return "ok"

    return client


def prompts(*texts: str, tracer: Any = None) -> list[tuple[str, Any, int]]:
    """Connect, send each prompt (a plain emit) and wait for its ``done``; returns what the client handled (its
    handlers make spans with ``tracer``)."""
    received: list[tuple[str, Any, int]] = []

    async def scenario() -> None:
        sio = streaming_server()
        async with aiohttp_server(sio) as url:
            client = recording_client(received, tracer)
            await client.connect(url, transports=["websocket"])
            for n, text in enumerate(texts, 1):
                await client.emit("prompt", text)
                await until_received(received, n * (TOKENS + 1))
            await client.disconnect()

    run(scenario())
    return received


def test_a_handlers_token_emits_are_one_stream(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """20 ``token`` emits then ``done`` in one handler: one ``send token /`` stream span (20 chunks, time to first
    and last chunk from the handler's start, interval stats) and one ``send done /``; on the client, one ``process
    token /`` receive stream (a child of the stream span) in which all 20 handler calls ran, and the spans they
    made are its children; ``done`` is a span as without streams."""
    instrument()
    received = prompts("hi", tracer=telemetry.provider.get_tracer("test"))
    assert [event for event, _, _ in received] == ["token"] * TOKENS + ["done"]
    assert [arg for _, arg, _ in received[:TOKENS]] == [f"hi-{i}" for i in range(TOKENS)]
    handler = telemetry.one("process prompt /")
    stream = telemetry.one("send token /")
    assert stream.kind == SpanKind.PRODUCER and parent(stream) == sid(handler)
    attrs = stream.attributes or {}
    assert attrs["wstrace.stream.chunk_count"] == TOKENS
    assert attrs["wstrace.stream.size"] == sum(len(f"hi-{i}") for i in range(TOKENS))
    assert 0 < attrs["wstrace.stream.time_to_first_chunk"] < attrs["wstrace.stream.time_to_last_chunk"]
    assert attrs["wstrace.stream.chunk_interval.mean"] > 0
    assert attrs["wstrace.stream.chunk_interval.max"] >= attrs["wstrace.stream.chunk_interval.p50"]
    assert attrs["wstrace.socketio.recipients"] == 1
    assert attrs["messaging.socket.io.event_name"] == "token"
    assert (stream.end_time or 0) <= (handler.end_time or 0)
    done = telemetry.one("send done /")
    assert parent(done) == sid(handler)
    assert (done.attributes or {})["wstrace.stream.chunk_count"] == 1  # a stream of one
    assert "wstrace.stream.chunk_interval.mean" not in (done.attributes or {})
    receiving = telemetry.one("process token /")
    assert receiving.kind == SpanKind.CONSUMER and parent(receiving) == sid(stream)
    got = receiving.attributes or {}
    assert got["wstrace.stream.chunk_count"] == TOKENS
    assert got["wstrace.stream.size"] == attrs["wstrace.stream.size"]
    assert got["messaging.operation.type"] == "process" and got["messaging.socket.io.event_name"] == "token"
    # It answers the client's emit of prompt (same trace): timed from that emit, as the user waits.
    assert 0 < got["wstrace.stream.time_to_first_chunk"] < got["wstrace.stream.time_to_last_chunk"]
    assert got["wstrace.stream.chunk_interval.mean"] > 0
    assert {span for event, _, span in received if event == "token"} == {sid(receiving)}
    handled = telemetry.named("handle token")
    assert len(handled) == TOKENS and all(parent(h) == sid(receiving) for h in handled)
    assert (receiving.end_time or 0) >= max(h.end_time or 0 for h in handled)
    single = telemetry.one("process done /")
    assert parent(single) == sid(done)
    assert not [k for k in single.attributes or {} if k.startswith("wstrace.stream.")]  # as without streams
    assert parent(telemetry.one("handle done")) == sid(single)
    assert len({tid(s) for s in telemetry.spans if s.name.endswith(("prompt /", "token /", "done /"))}) == 1


def test_chunk_spans_keep_a_span_per_emit(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """``chunk_spans=True``: the stream span, plus one ``send token /`` span per emit under it."""
    instrument(chunk_spans=True)
    prompts("hi")
    handler = telemetry.one("process prompt /")
    sends = telemetry.named("send token /")
    stream = next(s for s in sends if parent(s) == sid(handler))
    chunks = [s for s in sends if parent(s) == sid(stream)]
    assert len(sends) == TOKENS + 1 and len(chunks) == TOKENS
    assert (stream.attributes or {})["wstrace.stream.chunk_count"] == TOKENS
    assert all((c.attributes or {})["wstrace.socketio.recipients"] == 1 for c in chunks)
    assert all(c.kind == SpanKind.PRODUCER for c in chunks)
    token_handlers = telemetry.named("process token /")  # the receiving end keeps a span per event
    assert len(token_handlers) == TOKENS and {parent(h) for h in token_handlers} == {sid(c) for c in chunks}
    assert all("wstrace.stream.chunk_count" not in (h.attributes or {}) for h in token_handlers)


def test_two_requests_are_two_streams(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """Each handled ``prompt`` owns its own stream: two prompts, two ``send token /`` spans of 20 chunks."""
    instrument()
    prompts("one", "two")
    handlers = telemetry.named("process prompt /")
    streams = telemetry.named("send token /")
    assert len(handlers) == len(streams) == 2
    assert {parent(s) for s in streams} == {sid(h) for h in handlers}
    assert all((s.attributes or {})["wstrace.stream.chunk_count"] == TOKENS for s in streams)
    assert len({tid(s) for s in streams}) == 2
    receiving = telemetry.named("process token /")  # the client: one receive stream per stream
    assert len(receiving) == 2 and {parent(r) for r in receiving} == {sid(s) for s in streams}
    assert all((r.attributes or {})["wstrace.stream.chunk_count"] == TOKENS for r in receiving)


def test_emits_with_a_callback_are_never_folded(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """Three ``token`` emits with an ack callback are three spans, each with its ack span as its child."""
    instrument()
    received: list[tuple[str, Any, int]] = []

    async def scenario() -> None:
        sio = streaming_server()
        async with aiohttp_server(sio) as url:
            client = recording_client(received)
            await client.connect(url, transports=["websocket"])
            await client.call("acked")
            await until_received(received, 3)
            await asyncio.sleep(0.1)  # the acks come back
            await client.disconnect()

    run(scenario())
    sends = telemetry.named("send token /")
    assert len(sends) == 3
    assert all("wstrace.stream.chunk_count" not in (s.attributes or {}) for s in sends)
    acks = telemetry.named("ack token /")
    assert sorted(parent(a) or 0 for a in acks) == sorted(sid(s) for s in sends)
    handlers = telemetry.named("process token /")  # requests: the receiving end never folds them either
    assert sorted(parent(h) or 0 for h in handlers) == sorted(sid(s) for s in sends)
    assert all("wstrace.stream.chunk_count" not in (h.attributes or {}) for h in handlers)


def test_stream_histograms_are_recorded(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """The stream histograms: one ``token`` stream of 20 chunks and the ``done`` reply (time to first chunk only)."""
    reader = InMemoryMetricReader()
    instrument(meter_provider=MeterProvider(metric_readers=[reader]))
    prompts("hi")
    data = reader.get_metrics_data()
    points: dict[str, list[Any]] = {}
    for resource in data.resource_metrics if data is not None else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                points.setdefault(metric.name, []).extend(metric.data.data_points)

    def counts(name: str, direction: str) -> list[tuple[int, float]]:
        found = [p for p in points[name] if p.attributes["wstrace.stream.direction"] == direction]
        assert all(
            dict(p.attributes) == {"messaging.system": "socket.io", "wstrace.stream.direction": direction}
            for p in found
        )
        return [(p.count, p.sum) for p in found]

    assert counts("wstrace.stream.chunks", "outbound") == [(1, TOKENS)]
    assert sum(c for c, _ in counts("wstrace.stream.time_to_first_chunk", "outbound")) == 2  # token, and done
    assert sum(c for c, _ in counts("wstrace.stream.time_to_last_chunk", "outbound")) == 1
    assert sum(c for c, _ in counts("wstrace.stream.chunk_interval", "outbound")) == 1
    # The client's receive stream of the tokens; its single events (done) record nothing, as without streams.
    assert counts("wstrace.stream.chunks", "inbound") == [(1, TOKENS)]
    assert [c for c, _ in counts("wstrace.stream.time_to_first_chunk", "inbound")] == [1]
    assert [c for c, _ in counts("wstrace.stream.time_to_last_chunk", "inbound")] == [1]
    assert [c for c, _ in counts("wstrace.stream.chunk_interval", "inbound")] == [1]


def test_runs_outside_a_handler(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """Emits under an application span are one run (child of it, no time to first chunk); another event ends it;
    an end marker (``stream_end``) ends a run with its chunk; the client's disconnect ends the rest."""
    instrument(stream_end=lambda data: data == "last")
    received: list[tuple[str, Any, int]] = []
    tracer = telemetry.provider.get_tracer("test")

    async def scenario() -> None:
        sio = streaming_server()
        async with aiohttp_server(sio) as url:
            client = recording_client(received)
            await client.connect(url, transports=["websocket"])
            with tracer.start_as_current_span("turn"):
                for i in range(5):
                    await client.emit("frame", i)
                await client.emit("end")
                for word in ("last", "a", "last", "b"):
                    await client.emit("word", word)
            await asyncio.sleep(0.1)
            await client.disconnect()

    run(scenario())
    turn = telemetry.one("turn")
    frames = telemetry.one("send frame /")
    assert parent(frames) == sid(turn)
    attrs = frames.attributes or {}
    assert attrs["wstrace.stream.chunk_count"] == 5
    assert "wstrace.stream.time_to_first_chunk" not in attrs
    assert "wstrace.socketio.recipients" not in attrs  # a client's emit has none
    assert parent(telemetry.one("send end /")) == sid(turn)
    words = sorted(telemetry.named("send word /"), key=lambda s: s.start_time or 0)
    assert [(w.attributes or {})["wstrace.stream.chunk_count"] for w in words] == [1, 2, 1]
    received_frames = telemetry.one("process frame /")  # the server: one receive stream of the run
    assert parent(received_frames) == sid(frames)
    assert (received_frames.attributes or {})["wstrace.stream.chunk_count"] == 5
    # The end marker ends a receive stream with its event (alone, a run of one); "b" is a run of one too.
    received_words = sorted(telemetry.named("process word /"), key=lambda s: s.start_time or 0)
    assert [parent(w) for w in received_words] == [sid(w) for w in words]
    assert [(w.attributes or {}).get("wstrace.stream.chunk_count") for w in received_words] == [None, 2, None]


def test_streams_off_is_a_span_per_emit(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """``streams=False``: a span per emit, as before streams, without the stream attributes."""
    instrument(streams=False)
    prompts("hi")
    sends = telemetry.named("send token /")
    assert len(sends) == TOKENS
    assert all("wstrace.stream.chunk_count" not in (s.attributes or {}) for s in sends)


def test_a_task_the_handler_started_and_the_idle_gap(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """A task the handler started, emitting after the handler returned, makes a run that is the handler span's
    child (no time to first chunk); the idle gap ends that run by itself, before anything else happens; a run to
    another destination is another stream."""
    instrument(stream_idle=0.2)
    received: list[tuple[str, Any, int]] = []
    exported: list[int] = []

    async def scenario() -> None:
        sio = socketio.AsyncServer(async_mode="aiohttp")
        tasks: list[asyncio.Task[None]] = []

        async def later(to: str) -> None:
            await asyncio.sleep(0.05)
            for i in range(4):
                await sio.emit("tick", i, to=to)
            await sio.emit("tick", "all")  # the whole namespace: another destination

        @sio.event
        async def start(sid_: str) -> None:
            tasks.append(asyncio.create_task(later(sid_)))

        async with aiohttp_server(sio) as url:
            client = recording_client(received)
            await client.connect(url, transports=["websocket"])
            await client.emit("start")
            await until_received(received, 5)
            await asyncio.sleep(0.6)  # the idle gap has passed: the runs ended on their own
            exported.append(len(telemetry.named("send tick /")))
            await client.disconnect()

    run(scenario())
    assert exported == [2]
    handler = telemetry.one("process start /")
    ticks = sorted(telemetry.named("send tick /"), key=lambda s: s.start_time or 0)
    assert [(t.attributes or {})["wstrace.stream.chunk_count"] for t in ticks] == [4, 1]
    assert all(parent(t) == sid(handler) for t in ticks)
    assert "wstrace.stream.time_to_first_chunk" not in (ticks[0].attributes or {})
    assert (ticks[0].attributes or {})["messaging.destination.name"] != "/"
    assert (ticks[1].attributes or {})["messaging.destination.name"] == "/"


def test_threaded_server_and_client(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """The threaded ``socketio.Server`` (WSGI) streaming to the threaded ``socketio.Client``: one stream span of 20
    chunks, the client's 20 handler spans its children."""
    instrument()
    received: list[tuple[str, list[Any]]] = []
    sio = socketio.Server(async_mode="threading")

    def prompt(sid_: str, text: str) -> None:
        for i in range(TOKENS):
            sio.emit("token", f"{text}-{i}", to=sid_)
        sio.emit("done", to=sid_)

    sio.on("prompt", prompt)
    with wsgi_server(socketio.WSGIApp(sio)) as url:
        client = Driver(False, received)
        client.connect(url, transports=["websocket"])
        client.emit("prompt", "hi")
        assert threaded_wait(lambda: len(received) >= TOKENS + 1)
        client.disconnect()
    assert [event for event, _ in received] == ["token"] * TOKENS + ["done"]
    handler = telemetry.one("process prompt /")
    stream = telemetry.one("send token /")
    assert parent(stream) == sid(handler)
    assert (stream.attributes or {})["wstrace.stream.chunk_count"] == TOKENS
    receiving = telemetry.one("process token /")
    assert parent(receiving) == sid(stream)
    assert (receiving.attributes or {})["wstrace.stream.chunk_count"] == TOKENS
    assert parent(telemetry.one("process done /")) == sid(telemetry.one("send done /"))


def test_a_failed_emit_ends_its_stream_failed(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """An emit that raises (an argument JSON cannot encode) ends its stream with status ERROR, keeping its
    figures; the application gets the library's exception; a ``stream_end`` that raises is not the end."""

    def broken_marker(data: Any) -> bool:
        raise RuntimeError("marker bug")

    instrument(stream_end=broken_marker)
    received: list[tuple[str, Any, int]] = []
    errors: list[str] = []

    async def scenario() -> None:
        sio = socketio.AsyncServer(async_mode="aiohttp")

        @sio.event
        async def prompt(sid_: str) -> None:
            await sio.emit("token", "a", to=sid_)
            await sio.emit("token", "b", to=sid_)
            try:
                await sio.emit("token", object(), to=sid_)
            except TypeError as exc:
                errors.append(type(exc).__name__)

        async with aiohttp_server(sio) as url:
            client = recording_client(received)
            await client.connect(url, transports=["websocket"])
            await client.emit("prompt")
            await until_received(received, 2)
            await asyncio.sleep(0.1)
            await client.disconnect()

    run(scenario())
    assert errors == ["TypeError"]
    stream = telemetry.one("send token /")
    assert (stream.attributes or {})["wstrace.stream.chunk_count"] == 3
    assert stream.status.status_code.name == "ERROR"
    assert parent(stream) == sid(telemetry.one("process prompt /"))


FRAMES = 50


def test_uplink_frames_are_one_receive_stream(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """A client emits ``frame`` 50 times under its span ``voice turn``: the client's run ``send frame /``, and on the
    server one ``process frame /`` receive stream (its child, 50 chunks, no time to first chunk: it answers nothing
    the server sent), in which every handler call ran; the handlers' spans are its children."""
    instrument()
    tracer = telemetry.provider.get_tracer("test")
    seen: list[tuple[Any, int]] = []

    async def scenario() -> None:
        sio = socketio.AsyncServer(async_mode="aiohttp")

        @sio.event
        async def frame(sid_: str, data: Any) -> None:
            seen.append((data, span_id_now()))
            with tracer.start_as_current_span("transcribe"):
                await asyncio.sleep(0)

        async with aiohttp_server(sio) as url:
            client = recording_client([])
            await client.connect(url, transports=["websocket"])
            with tracer.start_as_current_span("voice turn"):
                for i in range(FRAMES):
                    await client.emit("frame", f"f{i:02}")
            await until_received(seen, FRAMES)
            await client.disconnect()

    run(scenario())
    assert [data for data, _ in seen] == [f"f{i:02}" for i in range(FRAMES)]
    run_span = telemetry.one("send frame /")
    assert parent(run_span) == sid(telemetry.one("voice turn"))
    receiving = telemetry.one("process frame /")
    assert receiving.kind == SpanKind.CONSUMER and parent(receiving) == sid(run_span)
    attrs = receiving.attributes or {}
    assert attrs["wstrace.stream.chunk_count"] == FRAMES and attrs["wstrace.stream.size"] == 3 * FRAMES
    assert "wstrace.stream.time_to_first_chunk" not in attrs and "wstrace.stream.time_to_last_chunk" not in attrs
    assert attrs["wstrace.stream.chunk_interval.mean"] >= 0
    assert {span for _, span in seen} == {sid(receiving)}
    transcribed = telemetry.named("transcribe")
    assert len(transcribed) == FRAMES and all(parent(t) == sid(receiving) for t in transcribed)
    contract.no_open_spans(telemetry)


def test_threaded_uplink_is_one_receive_stream(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """The threaded client's run of 50 ``frame`` emits to the threaded server, which handles each event in a thread
    of its own: one ``process frame /`` receive stream of 50 chunks, in which every handler call ran."""
    instrument()
    seen: list[int] = []
    sio = socketio.Server(async_mode="threading")
    sio.on("frame", lambda sid_, data: seen.append(span_id_now()))
    with wsgi_server(socketio.WSGIApp(sio)) as url:
        client = Driver(False, [])
        client.connect(url, transports=["websocket"])
        with telemetry.provider.get_tracer("test").start_as_current_span("voice turn"):
            for i in range(FRAMES):
                client.emit("frame", i)
        assert threaded_wait(lambda: len(seen) >= FRAMES)
        (receiver,) = sio.__dict__["_wstrace_receivers"].values()
        timer = receiver.timer  # the idle gap's, a daemon thread (the run is still open)
        assert isinstance(timer, threading.Timer) and timer.is_alive()
        client.disconnect()
        assert threaded_wait(lambda: telemetry.named("process frame /"))
        assert threaded_wait(lambda: not timer.is_alive(), 2)  # cancelled at the close, not left to run out
    receiving = telemetry.one("process frame /")
    assert parent(receiving) == sid(telemetry.one("send frame /"))
    assert (receiving.attributes or {})["wstrace.stream.chunk_count"] == FRAMES
    assert set(seen) == {sid(receiving)}
    assert sio.__dict__.get("_wstrace_receivers") == {}  # the connection's state went with it
    contract.no_open_spans(telemetry)


def test_a_single_event_is_the_span_it_was(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """An event that is not followed by another of its sender's stream (a run of one) keeps the span it has without
    streams: same name, kind, parent, links and attributes, ending when its handler returned (not when the run was
    found to be over), no stream attribute."""

    def one_question() -> ReadableSpan:
        telemetry.exporter.clear()
        received: list[tuple[str, Any, int]] = []

        async def scenario() -> None:
            sio = socketio.AsyncServer(async_mode="aiohttp")

            @sio.event
            async def question(sid_: str, text: str) -> None:
                await asyncio.sleep(0.05)
                await sio.emit("answer", text.upper(), to=sid_)

            async with aiohttp_server(sio) as url:
                client = recording_client(received)
                await client.connect(url, transports=["websocket"])
                await client.emit("question", "why")
                await until_received(received, 1)
                await asyncio.sleep(0.3)  # the runs stay open this long (stream_idle is 5 s): the spans end earlier
                await client.disconnect()

        run(scenario())
        assert [(event, arg) for event, arg, _ in received] == [("answer", "WHY")]
        return telemetry.one("process question /")

    instrument(streams=False)
    bare = one_question()
    SocketioInstrumentor().uninstrument()
    instrument()
    streamed = one_question()
    assert (streamed.name, streamed.kind) == (bare.name, bare.kind)
    assert parent(streamed) == sid(telemetry.one("send question /"))
    keys = {k for k in streamed.attributes or {} if k != "websocket.session.id"}
    assert keys == {k for k in bare.attributes or {} if k != "websocket.session.id"}
    assert [dict(link.attributes or {}) for link in streamed.links] == [
        dict(link.attributes or {}) for link in bare.links
    ]
    assert 0.04 < ((streamed.end_time or 0) - (streamed.start_time or 0)) * 1e-9 < 0.25
    answer = telemetry.one("process answer /")
    assert parent(answer) == sid(telemetry.one("send answer /"))
    assert not [k for k in answer.attributes or {} if k.startswith("wstrace.stream.")]


def test_a_handler_that_raises_on_one_chunk(
    telemetry: Telemetry, instrument: Callable[..., None], caplog: pytest.LogCaptureFixture
) -> None:
    """The client's token handler raises on the third chunk: the error is recorded on the receive stream (status
    ERROR, the exception event), the remaining chunks are still handled, and the library sees and logs the same
    exception as without wstrace."""

    def stream_to_a_failing_handler() -> tuple[list[Any], list[tuple[str, str]]]:
        handled: list[Any] = []
        caplog.clear()

        async def scenario() -> None:
            sio = streaming_server()
            async with aiohttp_server(sio) as url:
                client = socketio.AsyncClient(reconnection=False)

                @client.on("token")
                async def token(text: str) -> None:
                    handled.append(text)
                    if text == "hi-2":
                        raise ValueError("bad token")

                @client.on("done")
                async def done() -> None:
                    handled.append("done")

                await client.connect(url, transports=["websocket"])
                await client.emit("prompt", "hi")
                await until_received(handled, TOKENS + 1)
                await client.disconnect()

        run(scenario())
        logged = [
            (type(r.exc_info[1]).__name__, str(r.exc_info[1])) for r in caplog.records if r.exc_info and r.exc_info[1]
        ]
        return handled, logged

    bare = stream_to_a_failing_handler()
    assert bare[1] == [("ValueError", "bad token")]
    instrument()
    assert stream_to_a_failing_handler() == bare
    receiving = telemetry.one("process token /")
    assert receiving.status.status_code.name == "ERROR"
    assert (receiving.attributes or {})["error.type"] == "ValueError"
    assert (receiving.attributes or {})["wstrace.stream.chunk_count"] == TOKENS
    assert [e.attributes["exception.message"] for e in receiving.events if e.name == "exception"] == ["bad token"]


def test_the_idle_gap_and_the_close_end_a_receive_stream(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """A receive stream followed by nothing ends by itself once the idle gap has passed (a timer: exported before
    anything else happens), at its last handler's return; the client's disconnect drops the connection's state."""
    instrument(stream_idle=0.2)
    received: list[tuple[str, Any, int]] = []
    exported: list[list[str]] = []
    clients: list[socketio.AsyncClient] = []

    async def scenario() -> None:
        sio = socketio.AsyncServer(async_mode="aiohttp")

        @sio.event
        async def prompt(sid_: str) -> None:
            for i in range(5):
                await sio.emit("token", i, to=sid_)

        async with aiohttp_server(sio) as url:
            client = recording_client(received)
            clients.append(client)
            await client.connect(url, transports=["websocket"])
            await client.emit("prompt")
            await until_received(received, 5)
            await asyncio.sleep(0.6)
            exported.append([s.name for s in telemetry.spans if s.name.startswith("process ")])
            await client.disconnect()

    run(scenario())
    assert sorted(exported[0]) == ["process prompt /", "process token /"]
    receiving = telemetry.one("process token /")
    assert (receiving.attributes or {})["wstrace.stream.chunk_count"] == 5
    assert "_wstrace_receiver" not in clients[0].__dict__
    contract.no_open_spans(telemetry)


def paced_tokens(count: int, pause: float) -> list[tuple[str, Any, int]]:
    """A handler emits ``count`` ``token`` (``pause`` apart), then ``done``, to the client that asked; returns what
    the client handled."""
    received: list[tuple[str, Any, int]] = []

    async def scenario() -> None:
        sio = socketio.AsyncServer(async_mode="aiohttp")

        @sio.event
        async def prompt(sid_: str) -> None:
            for i in range(count):
                await sio.emit("token", i, to=sid_)
                await asyncio.sleep(pause)
            await sio.emit("done", to=sid_)

        async with aiohttp_server(sio) as url:
            client = recording_client(received)
            await client.connect(url, transports=["websocket"])
            await client.emit("prompt")
            await until_received(received, count + 1)
            await client.disconnect()

    run(scenario())
    return received


def test_run_limit_splits_a_receive_stream(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """A handler's stream answers its event and is not split by ``run_limit``; the receiving end's is: a receive
    stream that has lasted ``run_limit`` ends, and the next event starts one linked to it (``previous``)."""
    instrument(run_limit=0.1)
    paced_tokens(12, 0.02)
    stream = telemetry.one("send token /")
    assert (stream.attributes or {})["wstrace.stream.chunk_count"] == 12
    receiving = sorted(telemetry.named("process token /"), key=lambda s: s.start_time or 0)
    assert len(receiving) >= 2 and all(parent(r) == sid(stream) for r in receiving)
    assert sum((r.attributes or {}).get("wstrace.stream.chunk_count", 1) for r in receiving) == 12
    for before, after in itertools.pairwise(receiving):
        previous = [link for link in after.links if (link.attributes or {}).get("wstrace.link.kind") == "previous"]
        assert [link.context.span_id for link in previous] == [sid(before)]


def test_trust_link_and_the_message_hook(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """``trust=link``: the receive stream is a new trace linked to the sender's stream span; the ``message_hook``
    is called once per receive stream, with its first event."""
    hooked: list[tuple[str, list[Any]]] = []

    def hook(span: Any, payload: list[Any], direction: str) -> None:
        if direction == "received":
            hooked.append((span.name, payload))

    instrument(trust="link", message_hook=hook)
    paced_tokens(5, 0.001)
    stream = telemetry.one("send token /")
    receiving = telemetry.one("process token /")
    assert parent(receiving) is None and tid(receiving) != tid(stream)
    assert [link.context.span_id for link in receiving.links if link.context.span_id == sid(stream)] == [sid(stream)]
    assert (receiving.attributes or {})["wstrace.stream.chunk_count"] == 5
    assert [entry for entry in hooked if entry[0] != "process prompt /"] == [
        ("process token /", ["token", 0]),
        ("process done /", ["done"]),
    ]


def test_the_connection_model(telemetry: Telemetry, instrument: Callable[..., None]) -> None:
    """``model="connection"``: the receive stream is a child of the client's connection span, linked to the sender's
    stream span, and still one span for the stream."""
    instrument(model="connection")
    paced_tokens(5, 0.001)
    stream = telemetry.one("send token /")
    receiving = telemetry.one("process token /")
    assert (receiving.attributes or {})["wstrace.stream.chunk_count"] == 5
    connection = next(s for s in telemetry.spans if sid(s) == parent(receiving))
    assert connection.name.startswith("websocket") and connection.kind == SpanKind.INTERNAL
    assert [link.context.span_id for link in receiving.links] == [sid(stream)]
