"""The Channels test project (``tests/instrumentation/channels_app.py``) served in a process of its own.

    python channels_server.py uvicorn|daphne memory|redis|pubsub REDIS_PORT [bare]

Instrumented by ``ChannelsInstrumentor`` (options from ``WSTRACE_*`` in the environment) unless ``bare``.
Listens on a free loopback port; prints (``PEER `` + one JSON object per line) the port and each channel-layer
event a consumer handled, with the span current in its handler. Every span is printed by the SDK's console
exporter on the same stream as it ends. daphne runs on Twisted's reactor, which starts once per process.
"""

from __future__ import annotations

import socket
import sys
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

from tests.instrumentation import channels_app
from tests.peers.bare import emit


def make_app(layer: str, port: int, bare: bool) -> Any:
    channels_app.PEER = True
    channels_app.use_layer(layer, port)
    if not bare:
        from wstrace.instrumentation.channels import ChannelsInstrumentor  # noqa: PLC0415

        provider = TracerProvider()
        exporter = ConsoleSpanExporter(formatter=lambda span: span.to_json() + "\n")
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        ChannelsInstrumentor().instrument(tracer_provider=provider)
    return channels_app.build()


def run_daphne(app: Any) -> None:
    from daphne.server import Server  # noqa: PLC0415 - installs Twisted's asyncio reactor on import

    class Announcing(Server):  # type: ignore[misc]
        def listen_success(self, port: Any) -> None:
            super().listen_success(port)
            emit(event="listening", port=port.getHost().port)

    Announcing(app, endpoints=["tcp:port=0:interface=127.0.0.1"], verbosity=0).run()


def run_uvicorn(app: Any) -> None:
    import uvicorn  # noqa: PLC0415

    sock = socket.create_server(("127.0.0.1", 0))
    emit(event="listening", port=sock.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", log_config=None, lifespan="off"))
    server.run(sockets=[sock])


if __name__ == "__main__":
    runners = {"daphne": run_daphne, "uvicorn": run_uvicorn}
    try:
        runners[sys.argv[1]](make_app(sys.argv[2], int(sys.argv[3]), "bare" in sys.argv[4:]))
    except KeyboardInterrupt:
        pass
