"""A worker process for the Redis hop tests: takes jobs from Redis, publishes results back.

    python redis_worker.py PORT list|stream COUNT

Reads jobs from the list ``jobs`` (BRPOP) or the stream ``jobs`` (XREADGROUP,
group ``workers``), handles each inside ``restore()``, and publishes
``{"id": ..., "result": ...}`` on the channel ``results``. Exits after COUNT
jobs, or after 20 seconds. Spans go to stdout through the SDK's console
exporter; lines for the test start with ``PEER `` and hold one JSON object.
``WSTRACE_CARRY_LINK`` in the environment picks parent or link.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import redis
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

from wstrace.queues import Carried, restore
from wstrace.redis import RedisHop, StreamEntry


def emit(**fields: Any) -> None:
    print("PEER " + json.dumps(fields), flush=True)


def text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def main(port: int, transport: str, count: int) -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    tracer = provider.get_tracer("worker")
    client = redis.Redis(port=port)  # bytes in, bytes out
    hop = RedisHop(client, tracer_provider=provider)
    emit(event="ready")
    done = 0
    deadline = time.monotonic() + 20
    while done < count and time.monotonic() < deadline:
        if transport == "list":
            popped = hop.brpop(["jobs"], timeout=0.2)
            batch: list[Carried[Any]] = [popped] if popped is not None else []
        else:
            batch = hop.xreadgroup("workers", "worker-1", {"jobs": ">"}, count=10, block=200)
        for carried in batch:
            with restore(carried, tracer_provider=provider) as item:
                if isinstance(item, StreamEntry):
                    raw = dict(item.fields)
                    body = raw.get(b"job", b"")
                    fields = {text(k): text(v) for k, v in raw.items()}
                else:
                    body = item[1]
                    fields = None
                current = trace.get_current_span().get_span_context()
                emit(event="job", body=text(body), fields=fields, span_id=f"0x{current.span_id:016x}")
                try:
                    job = json.loads(body)
                except ValueError:
                    job = {"id": None, "data": text(body)}
                with tracer.start_as_current_span("work"):
                    result = str(job.get("data", "")).upper()
                hop.publish("results", json.dumps({"id": job.get("id"), "result": result}))
                if isinstance(item, StreamEntry):
                    client.xack("jobs", "workers", item.id)
            done += 1
    emit(event="done", count=done)
    client.close()
    provider.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]))
