"""Trace context through Redis (lists, Streams, pub/sub) against a real redis-server, sync and asyncio."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pytest
import redis
import redis.asyncio
from opentelemetry import baggage, context as otel_context, trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from tests.conftest import Telemetry
from tests.console import console_spans
from tests.instrumentation.contract import parent_id, span_id, trace_id
from tests.redis_server import require_redis_server
from wstrace.instrumentation.websockets import WebsocketsInstrumentor
from wstrace.queues import Carried, restore
from wstrace.redis import (
    AsyncRedisHop,
    RedisHop,
    StreamEntry,
    decode_entry,
    decode_value,
    encode_fields,
    encode_value,
)


ROOT = Path(__file__).resolve().parent.parent
WORKER = ROOT / "tests" / "peers" / "redis_worker.py"

# Values that hold no valid envelope: each must come back exactly as it went in.
FOREIGN: list[Any] = [
    b"plain bytes",
    b"",
    b'{"id": "foreign"}',
    b"\x1ewt1no terminator",  # text prefix, header never ends
    b"\x1ewt1bad header\x1epayload",  # a blank in the header
    b"\x1ewt1traceparent\x1epayload",  # an item without "="
    b"\x1ewt1tp=%C3%28\x1epayload",  # not UTF-8 once percent-decoded
    b"\x1ewt\x01\x00",  # binary prefix, truncated length
    b"\x1ewt\x01\x00\x50short",  # binary header longer than the value
    b"\x1ewt2a=b\x1efuture version",
    bytes(range(256)),
]


# The redis-server fixture (redis_port) is in conftest.py ---------------------------------


@pytest.fixture
def r(redis_port: int) -> Iterator[redis.Redis]:
    client = redis.Redis(port=redis_port)
    client.flushall()
    yield client
    client.close()


def test_missing_server_fails_under_ci() -> None:
    """No redis-server: a failure when CI is set, a skip with the reason otherwise."""
    with pytest.raises(pytest.fail.Exception, match="CI is set"):
        require_redis_server(["/nonexistent/redis-server", None], {"CI": "true"})
    with pytest.raises(pytest.skip.Exception, match="install it"):
        require_redis_server(["/nonexistent/redis-server"], {})
    assert require_redis_server(["/nonexistent", sys.executable], {"CI": "1"}) == sys.executable


# Helpers --------------------------------------------------------------------------------


def context_span_id(carried: Carried[Any]) -> int:
    return trace.get_current_span(carried.context).get_span_context().span_id


async def maybe(value: Any) -> Any:
    """Await what the asyncio hop returns; pass through what the sync one does."""
    return await value if inspect.isawaitable(value) else value


@asynccontextmanager
async def hop_for(kind: str, port: int, telemetry: Telemetry, **options: Any) -> AsyncIterator[Any]:
    if kind == "sync":
        client = redis.Redis(port=port, **options)
        yield RedisHop(client, tracer_provider=telemetry.provider)
        client.close()
    else:
        aclient = redis.asyncio.Redis(port=port, **options)
        yield AsyncRedisHop(aclient, tracer_provider=telemetry.provider)
        await aclient.aclose()


def publish_spans(telemetry: Telemetry, destination: str = "jobs") -> list[ReadableSpan]:
    """The write spans to ``destination``, named ``{command} {destination}``."""
    return [
        s
        for s in telemetry.spans
        if s.kind is SpanKind.PRODUCER and (s.attributes or {}).get("messaging.destination.name") == destination
    ]


# The codec, without a server ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [("text", "text"), ("", ""), ("ünïcødé", "ünïcødé"), (b"\x00\xffbin", b"\x00\xffbin"), (42, "42"), (1.5, "1.5")],
)
def test_value_round_trip(telemetry: Telemetry, value: Any, expected: Any) -> None:
    """A value keeps its type (numbers become text, as redis-py sends them) and carries the context."""
    tracer = telemetry.provider.get_tracer("test")
    with tracer.start_as_current_span("producer") as producer:
        wire = encode_value(value)
    assert isinstance(wire, type(expected))
    assert wire[:4] in ("\x1ewt1", b"\x1ewt1"), "the text layout, for str and bytes"
    carried = decode_value(wire, "jobs")
    assert carried.item == expected
    assert context_span_id(carried) == span_id(producer)
    assert carried.destination == "jobs"
    assert carried.attributes["messaging.system"] == "redis"


@pytest.mark.parametrize("value", [*FOREIGN, "plain text", "\x1ewt1broken"], ids=repr)
def test_foreign_values_pass_through(telemetry: Telemetry, value: Any) -> None:
    """A value that is not exactly an envelope is returned unchanged, and processed in a root span."""
    carried = decode_value(value, "jobs")
    assert carried.item == value
    assert type(carried.item) is type(value)
    assert context_span_id(carried) == 0
    with restore(carried, tracer_provider=telemetry.provider) as item:
        assert item == value
    process = telemetry.one("process jobs")
    assert process.parent is None
    assert not process.links


def test_stream_fields_codec(telemetry: Telemetry) -> None:
    """The context field is added to a copy, stripped on read, and never replaces the application's field."""
    tracer = telemetry.provider.get_tracer("test")
    fields = {"job": "1", b"blob": b"\x00"}
    with tracer.start_as_current_span("producer") as producer:
        encoded = encode_fields(fields)
        clash = encode_fields({"wstrace": "mine"})
    assert fields == {"job": "1", b"blob": b"\x00"}, "the caller's dict is not modified"
    assert set(encoded) == {"job", b"blob", "wstrace"}
    assert clash == {"wstrace": "mine"}
    carried = decode_entry(b"jobs", b"1-0", {k.encode() if isinstance(k, str) else k: v for k, v in encoded.items()})
    assert carried.item == StreamEntry(b"jobs", b"1-0", {b"job": "1", b"blob": b"\x00"})
    assert context_span_id(carried) == span_id(producer)
    assert carried.attributes["messaging.message.id"] == "1-0"
    for garbage in ({"job": "1", "wstrace": "garbage"}, {"wstrace": "\x1ewt1a=b\x1enot empty"}, {"job": "2"}, None):
        foreign = decode_entry("jobs", "2-0", garbage)
        assert foreign.item.fields is garbage, "a foreign entry keeps every field, the same object"
        assert context_span_id(foreign) == 0


# Lists --------------------------------------------------------------------------------------


@pytest.mark.parametrize("decode", [False, True], ids=["bytes", "decode_responses"])
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_list_round_trip(telemetry: Telemetry, redis_port: int, r: redis.Redis, kind: str, decode: bool) -> None:
    """LPUSH/RPUSH then BRPOP/BLPOP/RPOP/LPOP: values intact, each carrying its publish span."""
    tracer = telemetry.provider.get_tracer("test")
    b = (lambda s: s) if decode else (lambda s: s.encode())

    async def scenario() -> list[Any]:
        async with hop_for(kind, redis_port, telemetry, decode_responses=decode) as hop:
            with tracer.start_as_current_span("producer"):
                await maybe(hop.lpush("jobs", "a", "b"))  # jobs: b a
                await maybe(hop.rpush("jobs", "c"))  # jobs: b a c
                await maybe(hop.lpush("more", "x", "y", "z"))  # more: z y x
            got = [
                await maybe(hop.brpop(["jobs"], timeout=1)),
                await maybe(hop.blpop(["jobs"], timeout=1)),
                await maybe(hop.rpop("jobs")),
                await maybe(hop.lpop("more", 2)),
                await maybe(hop.rpop("more", 5)),
                await maybe(hop.rpop("jobs")),
                await maybe(hop.brpop(["jobs"], timeout=0.05)),
            ]
            return got

    brpop, blpop, rpop, lpop2, rpop5, empty, timed_out = asyncio.run(scenario())
    assert brpop.item == (b("jobs"), b("c"))
    assert blpop.item == (b("jobs"), b("b"))
    assert rpop.item == b("a")
    assert [c.item for c in lpop2] == [b("z"), b("y")]
    assert [c.item for c in rpop5] == [b("x")]
    assert empty is None and timed_out is None
    assert r.llen("jobs") == 0
    producer = telemetry.one("producer")
    publishes = [s for s in telemetry.spans if s.kind is SpanKind.PRODUCER]
    assert sorted(s.name for s in publishes) == ["lpush jobs", "lpush more", "rpush jobs"]
    for publish in publishes:
        assert publish.attributes["messaging.operation.type"] == "send", "not the deprecated 'publish'"
        assert parent_id(publish) == span_id(producer)
    by_op = {s.attributes["messaging.operation.name"]: s for s in publish_spans(telemetry)}
    assert context_span_id(brpop) == span_id(by_op["rpush"])
    assert context_span_id(blpop) == context_span_id(rpop) == span_id(by_op["lpush"])
    assert by_op["lpush"].attributes["messaging.batch.message_count"] == 2
    assert brpop.destination == "jobs"
    with restore(brpop, tracer_provider=telemetry.provider) as (_key, value):
        assert value == b("c")
    process = telemetry.one("process jobs")
    assert parent_id(process) == span_id(by_op["rpush"])
    assert process.attributes["messaging.system"] == "redis"
    assert process.attributes["messaging.message.body.size"] == 1
    assert telemetry.open_spans.names() == []


# Streams ------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, 3], ids=["resp2", "resp3"])
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_stream_round_trip(telemetry: Telemetry, redis_port: int, r: redis.Redis, kind: str, protocol: int) -> None:
    """XADD then XREAD and XREADGROUP: the application's fields intact, the context field stripped."""
    tracer = telemetry.provider.get_tracer("test")
    r.xgroup_create("jobs", "workers", id="0", mkstream=True)
    fields = {"job": "1", "blob": b"\x00\xff", "n": 7}

    async def scenario() -> tuple[Any, list[Carried[StreamEntry]], list[Carried[StreamEntry]]]:
        async with hop_for(kind, redis_port, telemetry, protocol=protocol) as hop:
            with tracer.start_as_current_span("producer"):
                entry_id = await maybe(hop.xadd("jobs", fields, maxlen=100))
                await maybe(hop.xadd("other", {"k": "v"}))
            read = await maybe(hop.xread({"jobs": "0", "other": "0"}, count=10))
            grouped = await maybe(hop.xreadgroup("workers", "w1", {"jobs": ">"}, count=10, block=100))
            return entry_id, read, grouped

    entry_id, read, grouped = asyncio.run(scenario())
    assert fields == {"job": "1", "blob": b"\x00\xff", "n": 7}
    assert [c.destination for c in read] == ["jobs", "other"]
    assert [c.item.fields for c in read] == [{b"job": b"1", b"blob": b"\x00\xff", b"n": b"7"}, {b"k": b"v"}]
    assert r.xrange("jobs")[0][1][b"wstrace"].startswith(b"\x1ewt1traceparent="), "on the wire"
    publish = publish_spans(telemetry)[0]
    assert publish.name == "xadd jobs"
    assert publish.attributes["messaging.operation.name"] == "xadd"
    assert publish.attributes["messaging.operation.type"] == "send"
    assert publish.attributes["messaging.message.id"] == entry_id.decode()
    body = len("job1") + len("blob") + 2 + len("n7")  # field names and values, without the context field
    assert publish.attributes["messaging.message.body.size"] == body
    [entry] = grouped
    assert entry.item.id == entry_id
    assert entry.item.fields == read[0].item.fields
    assert context_span_id(entry) == span_id(publish)
    with restore(entry, tracer_provider=telemetry.provider):
        pass
    process = telemetry.one("process jobs")
    assert parent_id(process) == span_id(publish)
    assert process.attributes["messaging.consumer.group.name"] == "workers"
    assert process.attributes["messaging.message.id"] == entry_id.decode()
    assert process.attributes["messaging.message.body.size"] == body


# Pub/sub ------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["get_message", "listen"])
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_pubsub_round_trip(telemetry: Telemetry, redis_port: int, kind: str, how: str) -> None:
    """PUBLISH then get_message()/listen(): data intact, confirmations passed through, context carried."""
    tracer = telemetry.provider.get_tracer("test")

    async def scenario() -> list[Carried[Any]]:
        async with hop_for(kind, redis_port, telemetry, socket_timeout=5) as hop:  # listen() ends in 5 s at worst
            pubsub = hop.client.pubsub()
            await maybe(pubsub.subscribe("results"))
            with tracer.start_as_current_span("producer"):
                await maybe(hop.publish("results", b"done"))
            await maybe(hop.client.publish("results", b"bare"))  # not through the hop: foreign
            got: list[Carried[Any]] = []
            if how == "get_message":
                deadline = time.monotonic() + 5
                while len(got) < 3 and time.monotonic() < deadline:
                    message = await maybe(hop.get_message(pubsub, timeout=0.1))
                    if message is not None:
                        got.append(message)
            elif kind == "sync":
                for message in hop.listen(pubsub):
                    got.append(message)
                    if len(got) == 3:
                        break
            else:
                async for message in hop.listen(pubsub):
                    got.append(message)
                    if len(got) == 3:
                        break
            await maybe(pubsub.aclose() if kind == "async" else pubsub.close())
            return got

    subscribed, done, bare = asyncio.run(scenario())
    assert subscribed.item["type"] == "subscribe"
    assert done.item["data"] == b"done"
    assert done.item["channel"] == b"results"
    assert context_span_id(done) == span_id(telemetry.one("publish results"))
    assert bare.item["data"] == b"bare"
    assert context_span_id(bare) == 0
    with restore(done, tracer_provider=telemetry.provider) as message:
        assert message["data"] == b"done"
    assert parent_id(telemetry.one("process results")) == span_id(telemetry.one("publish results"))


# Foreign and corrupt entries --------------------------------------------------------------------


def test_foreign_entries_are_returned_unchanged_and_processed(telemetry: Telemetry, r: redis.Redis) -> None:
    """Entries written without wstrace, or corrupted, come back byte for byte and are processed, none lost."""
    tracer = telemetry.provider.get_tracer("test")
    hop = RedisHop(r, tracer_provider=telemetry.provider)
    with tracer.start_as_current_span("producer"):
        hop.rpush("jobs", b"valid-1")
    r.rpush("jobs", *FOREIGN)
    with tracer.start_as_current_span("producer"):
        hop.rpush("jobs", b"valid-2")
    stream_foreign = [{b"job": b"plain"}, {b"job": b"x", b"wstrace": b"garbage"}, {b"wstrace": b"\x1ewt1a=b\x1etail"}]
    for fields in stream_foreign:
        r.xadd("stream", fields)
    with tracer.start_as_current_span("producer"):
        hop.xadd("stream", {b"job": b"valid-3"})

    processed: list[Any] = []
    while (carried := hop.lpop("jobs")) is not None:
        with restore(carried, tracer_provider=telemetry.provider) as item:
            processed.append(item)
    for carried in hop.xread({"stream": "0"}):
        with restore(carried, tracer_provider=telemetry.provider) as entry:
            processed.append(entry.fields)

    assert processed == [b"valid-1", *FOREIGN, b"valid-2", *stream_foreign, {b"job": b"valid-3"}]
    processes = sorted(telemetry.named("process jobs") + telemetry.named("process stream"), key=lambda s: s.start_time)
    assert len(processes) == len(processed)
    with_parent = [i for i, s in enumerate(processes) if s.parent is not None]
    assert with_parent == [0, len(FOREIGN) + 1, len(processes) - 1], "only the valid entries have a parent"
    assert all(not processes[i].links for i in range(len(processes)) if i not in with_parent)


# 1,000 entries, several worker threads ----------------------------------------------------------


def test_thousand_entries_through_a_consumer_group(telemetry: Telemetry, redis_port: int, r: redis.Redis) -> None:
    """1,000 XADDs consumed by 4 workers of one group: every process span under its own publish span."""
    tracer = telemetry.provider.get_tracer("test")
    count = 1000
    r.xgroup_create("jobs", "workers", id="0", mkstream=True)
    done: list[int] = []
    lock = threading.Lock()
    deadline = time.monotonic() + 30

    def worker(name: str) -> None:
        client = redis.Redis(port=redis_port)
        hop = RedisHop(client, tracer_provider=telemetry.provider)
        while time.monotonic() < deadline:
            with lock:
                if len(done) >= count:
                    break
            for carried in hop.xreadgroup("workers", name, {"jobs": ">"}, count=7, block=20):
                with restore(carried, tracer_provider=telemetry.provider) as entry:
                    item = int(entry.fields[b"item"])
                    with tracer.start_as_current_span("handle", attributes={"item": item}):
                        client.xack("jobs", "workers", entry.id)
                with lock:
                    done.append(item)
        client.close()

    workers = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for thread in workers:
        thread.start()
    hop = RedisHop(r, tracer_provider=telemetry.provider)
    for item in range(count):
        with tracer.start_as_current_span("produce", attributes={"item": item}):
            hop.xadd("jobs", {"item": str(item)})
    for thread in workers:
        thread.join(30)
    assert sorted(done) == list(range(count))
    spans = {span_id(s): s for s in telemetry.spans}
    handles = telemetry.named("handle")
    assert len(handles) == count
    assert len({s.attributes["messaging.consumer.group.name"] for s in telemetry.named("process jobs")}) == 1
    for handle in handles:
        process = spans[parent_id(handle)]
        publish = spans[parent_id(process)]
        produce = spans[parent_id(publish)]
        assert (process.name, publish.name, produce.name) == ("process jobs", "xadd jobs", "produce")
        assert produce.attributes["item"] == handle.attributes["item"], "cross-wired"
        assert [link.context.span_id for link in process.links] == [span_id(publish)]
        assert process.attributes["messaging.message.id"] == publish.attributes["messaging.message.id"]
        assert trace_id(process) == trace_id(produce)
    assert telemetry.open_spans.names() == []


# A WebSocket gateway, a worker process, and back --------------------------------------------------


@dataclass
class Rec:
    """A span from this process or from the worker's console output, in one shape."""

    name: str
    kind: str
    trace: int
    span: int
    parent: Optional[int]
    links: list[tuple[int, int, str]]
    process: str


def rec_from_sdk(span: ReadableSpan) -> Rec:
    links = [
        (link.context.trace_id, link.context.span_id, str((link.attributes or {}).get("wstrace.link.kind")))
        for link in span.links
    ]
    return Rec(span.name, span.kind.name, trace_id(span), span_id(span), parent_id(span), links, "gateway")


def rec_from_console(span: dict[str, Any]) -> Rec:
    links = [
        (
            int(link["context"]["trace_id"], 16),
            int(link["context"]["span_id"], 16),
            str(link["attributes"].get("wstrace.link.kind")),
        )
        for link in span["links"]
    ]
    parent = int(span["parent_id"], 16) if span["parent_id"] else None
    context = span["context"]
    return Rec(
        span["name"],
        span["kind"].split(".")[-1],
        int(context["trace_id"], 16),
        int(context["span_id"], 16),
        parent,
        links,
        "worker",
    )


def walk(rec: Rec, recs: dict[int, Rec]) -> list[Rec]:
    """Back to the origin: the parent when there is one, else the creation link (the link model)."""
    chain = [rec]
    while True:
        if rec.parent is not None and rec.parent in recs:
            rec = recs[rec.parent]
        else:
            creation = [span for _, span, kind in rec.links if kind == "creation" and span in recs]
            if not creation:
                return chain
            rec = recs[creation[0]]
        chain.append(rec)


def is_subsequence(wanted: list[str], names: list[str]) -> bool:
    it = iter(names)
    return all(name in it for name in wanted)


@pytest.fixture
def instrument(telemetry: Telemetry) -> Iterator[Callable[..., None]]:
    instrumentor = WebsocketsInstrumentor()

    def do(**options: Any) -> None:
        options.setdefault("tracer_provider", telemetry.provider)
        instrumentor.instrument(**options)

    yield do
    instrumentor.uninstrument()


@pytest.mark.parametrize("carry_link", ["parent", "link"])
@pytest.mark.parametrize("transport", ["list", "stream"])
def test_gateway_to_worker_process_and_back(
    telemetry: Telemetry,
    instrument: Callable[..., None],
    redis_port: int,
    r: redis.Redis,
    transport: str,
    carry_link: str,
) -> None:
    """Client → gateway → Redis → worker process → Redis pub/sub → gateway → client, in one trace (or linked set)."""
    instrument()  # message model, negotiated envelope
    tracer = telemetry.provider.get_tracer("test")
    foreign_jobs = [b'{"id": "foreign", "data": "raw"}']
    if transport == "list":
        r.lpush("jobs", *foreign_jobs)
    else:
        r.xgroup_create("jobs", "workers", id="0", mkstream=True)
        r.xadd("jobs", {b"job": foreign_jobs[0]})
        r.xadd("jobs", {b"job": b'{"id": "garbage", "data": "junk"}', b"wstrace": b"\x1ewt1garbage"})
    expected_jobs = (1 if transport == "list" else 2) + 1
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WSTRACE_", "OTEL_"))}
    env.update(PYTHONPATH=str(ROOT), WSTRACE_CARRY_LINK=carry_link)
    worker = subprocess.Popen(
        [sys.executable, str(WORKER), str(redis_port), transport, str(expected_jobs)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=ROOT,
    )

    async def scenario() -> Any:
        client = redis.asyncio.Redis(port=redis_port)
        hop = AsyncRedisHop(client, tracer_provider=telemetry.provider)
        pubsub = client.pubsub()
        await pubsub.subscribe("results")
        waiting: dict[str, ServerConnection] = {}
        results: list[Any] = []

        async def listen() -> None:
            async for carried in hop.listen(pubsub):
                if carried.item["type"] != "message":
                    continue
                with restore(carried, carry_link=carry_link, tracer_provider=telemetry.provider) as message:
                    body = json.loads(message["data"])
                    results.append(body)
                    ws = waiting.pop(body["id"], None)
                    if ws is not None:
                        await ws.send(body["result"])

        async def handler(ws: ServerConnection) -> None:
            async for message in ws:
                job_id = uuid.uuid4().hex
                waiting[job_id] = ws
                job = json.dumps({"id": job_id, "data": message})
                if transport == "list":
                    await hop.lpush("jobs", job)
                else:
                    await hop.xadd("jobs", {"job": job})

        listener = asyncio.create_task(listen())
        try:
            async with serve(handler, "127.0.0.1", 0) as srv:
                url = f"ws://127.0.0.1:{srv.sockets[0].getsockname()[1]}/chat"
                async with connect(url) as ws:
                    with tracer.start_as_current_span("ask"):
                        await ws.send("hello")
                    reply = await asyncio.wait_for(ws.recv(), 20)
            for _ in range(1000):  # the foreign jobs' results too, within 20 s
                if len(results) >= expected_jobs:
                    break
                await asyncio.sleep(0.02)
            return reply, results
        finally:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
            await pubsub.aclose()
            await client.aclose()

    try:
        reply, results = asyncio.run(scenario())
        output, _ = worker.communicate(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()
    assert reply == "HELLO"
    assert worker.returncode == 0, output
    events = [json.loads(line[5:]) for line in output.splitlines() if line.startswith("PEER ")]
    assert events[-1] == {"event": "done", "count": expected_jobs}, output

    # No data lost: the foreign jobs were processed exactly as they were written.
    bodies = [e["body"] for e in events if e["event"] == "job"]
    assert foreign_jobs[0].decode() in bodies
    if transport == "stream":
        garbage = next(e for e in events if e["event"] == "job" and "garbage" in e["body"])
        assert garbage["fields"]["wstrace"] == "\x1ewt1garbage", "a foreign context field is left in place"
    assert {res["id"] for res in results} >= {"foreign"}
    assert len(results) == expected_jobs

    worker_recs = [
        rec_from_console(s)
        for s in console_spans("\n".join(line for line in output.splitlines() if not line.startswith("PEER ")))
    ]
    recs = {rec.span: rec for rec in [rec_from_sdk(s) for s in telemetry.spans] + worker_recs}
    write = "lpush jobs" if transport == "list" else "xadd jobs"
    gw_publish = next(rec for rec in recs.values() if rec.name == write)
    worker_processes = [rec for rec in worker_recs if rec.name == "process jobs"]
    assert len(worker_processes) == expected_jobs
    real = [rec for rec in worker_processes if any(span == gw_publish.span for _, span, _ in rec.links)]
    assert len(real) == 1, "exactly the gateway's job is linked to the gateway's publish span"
    for rec in worker_processes:
        if rec is not real[0]:
            assert rec.parent is None and rec.links == [], "a foreign job is processed with no context"

    # The reply the client received, walked back to the client's "ask" span.
    reply_receive = [
        rec
        for rec in recs.values()
        if rec.name == "receive /chat" and any(step.name == "process results" for step in walk(rec, recs))
    ]
    assert len(reply_receive) == 1
    chain = walk(reply_receive[0], recs)
    names = [step.name for step in chain]
    assert is_subsequence(
        ["process results", "publish results", "process jobs", write, "receive /chat", "send /chat", "ask"],
        names,
    ), names
    assert [step.process for step in chain if step.name in ("publish results", "process jobs")] == ["worker", "worker"]
    traces = {step.trace for step in chain}
    process_jobs = next(step for step in chain if step.name == "process jobs")
    process_results = next(step for step in chain if step.name == "process results")
    if carry_link == "parent":
        assert len(traces) == 1, "one trace from the client's send to the reply it receives"
        assert process_jobs.parent == gw_publish.span
    else:
        assert len(traces) == 3, "client→gateway, worker, gateway→client: three traces joined by links"
        assert process_jobs.parent is None and process_results.parent is None
    assert [span for _, span, kind in process_jobs.links if kind == "creation"] == [gw_publish.span]
    assert telemetry.open_spans.names() == []


def test_importing_the_helpers_loads_no_redis() -> None:
    """wstrace.queues and wstrace.redis never import redis (nor the OpenTelemetry SDK)."""
    code = "import sys, wstrace.queues, wstrace.redis; print('\\n'.join(sys.modules))"
    loaded = set(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    )
    assert "wstrace.redis" in loaded
    assert not {m for m in loaded if m == "redis" or m.startswith("redis.")}
    assert not {m for m in loaded if m.startswith("opentelemetry.sdk")}


class _FakeClient:
    """Stands in for redis.Redis: records what a command saw, or fails."""

    def __init__(self, error: Optional[Exception] = None) -> None:
        self.error = error
        self.seen: list[tuple[Any, ...]] = []

    def lpush(self, name: str, *values: Any) -> int:
        self.seen.append((trace.get_current_span(), name, *values))
        if self.error is not None:
            raise self.error
        return len(values)


def test_publish_span_is_current_during_the_write_and_records_errors(telemetry: Telemetry) -> None:
    """A redis-py instrumentation's span would nest under the publish span; a failed write is an error, re-raised."""
    client = _FakeClient()
    assert RedisHop(client, tracer_provider=telemetry.provider).lpush("jobs", "a", b"b", 3) == 3
    current, _name, *values = client.seen[0]
    publish = telemetry.one("lpush jobs")
    assert current.get_span_context().span_id == span_id(publish)
    assert [decode_value(v).item for v in values] == ["a", b"b", "3"]
    assert current is not trace.get_current_span(), "detached after the call"

    failing = _FakeClient(redis.ConnectionError("down"))
    with pytest.raises(redis.ConnectionError):
        RedisHop(failing, tracer_provider=telemetry.provider).lpush("jobs", "a")
    failed = next(s for s in telemetry.named("lpush jobs") if s is not publish)
    assert failed.status.status_code.name == "ERROR"
    assert failed.attributes["error.type"] == "ConnectionError"


def test_unknown_reply_shapes_lose_nothing(telemetry: Telemetry) -> None:
    """Replies in shapes the helpers do not know are handed over whole, with no context."""

    class Odd:
        def brpop(self, keys: Any, timeout: float) -> Any:
            return b"not a pair"

        def xread(self, streams: Any, **kwargs: Any) -> Any:
            return [[b"jobs"]]  # a stream with no entries list

    hop = RedisHop(Odd(), tracer_provider=telemetry.provider)
    popped = hop.brpop(["jobs"])
    assert popped is not None and popped.item == b"not a pair"
    [entry] = hop.xread({"jobs": "0"})
    assert entry.item.fields == [[b"jobs"]]
    assert context_span_id(entry) == 0


# The how-to's worker, as pasted --------------------------------------------------------------


HOWTO = ROOT / "docs" / "howto" / "async-and-queues.md"


def howto_worker() -> str:
    """The python block after the how-to's worker-snippet marker, exactly as a reader copies it."""
    text = HOWTO.read_text()
    after = text[text.index("<!-- worker snippet:") :]
    start = after.index("```python\n") + len("```python\n")
    return after[start : after.index("```\n", start)]


def test_the_howto_worker_runs_as_pasted(telemetry: Telemetry, redis_port: int, tmp_path: Path) -> None:
    """The how-to's worker, run as pasted against a real redis-server: it takes the gateway's job, its
    process span is the child of the gateway's write, and its result carries the trace and the
    producer's baggage back."""
    script = tmp_path / "worker.py"
    script.write_text(howto_worker())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WSTRACE_", "OTEL_"))}
    env.update(PYTHONPATH=str(ROOT / "src"), REDIS_URL=f"redis://127.0.0.1:{redis_port}/0")
    client = redis.Redis(port=redis_port)
    client.flushall()
    pubsub = client.pubsub()
    pubsub.subscribe("results")
    hop = RedisHop(client, tracer_provider=telemetry.provider)
    assert hop.get_message(pubsub, timeout=5) is not None  # the subscribe confirmation
    worker = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        tracer = telemetry.provider.get_tracer("test")
        token = otel_context.attach(baggage.set_baggage("tenant", "acme"))
        try:
            with tracer.start_as_current_span("ask"):
                hop.lpush("jobs", json.dumps({"id": "j1", "data": "hello"}))
        finally:
            otel_context.detach(token)
        result = None
        deadline = time.monotonic() + 30
        while result is None and time.monotonic() < deadline and worker.poll() is None:
            result = hop.get_message(pubsub, ignore_subscribe_messages=True, timeout=0.5)
        assert result is not None, (
            f"no result; worker said: {worker.stderr.read() if worker.poll() is not None else ''}"
        )
        with restore(result, tracer_provider=telemetry.provider) as message:
            assert json.loads(message["data"]) == {"id": "j1", "result": "HELLO"}
            assert baggage.get_baggage("tenant") == "acme", "the producer's baggage came back through the worker"
        worker.send_signal(signal.SIGINT)  # Ctrl-C: the SDK flushes its batch at exit
        output, _ = worker.communicate(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()
        pubsub.close()
        client.close()
    spans = {s["name"]: s for s in console_spans(output)}
    lpush = telemetry.one("lpush jobs")
    process = spans["process jobs"]
    assert process["context"]["trace_id"] == f"0x{trace_id(lpush):032x}"
    assert process["parent_id"] == f"0x{span_id(lpush):016x}"
    assert spans["publish results"]["parent_id"] == process["context"]["span_id"]
    assert parent_id(telemetry.one("process results")) == int(spans["publish results"]["context"]["span_id"], 16)
