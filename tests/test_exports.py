"""The public surface is pinned, and importing wstrace stays light."""

from __future__ import annotations

import subprocess
import sys

import wstrace
import wstrace.instrumentation.channels
import wstrace.instrumentation.socketio
import wstrace.instrumentation.websockets


def test_public_names_are_pinned() -> None:
    """Adding or removing a public name is a deliberate change to this list."""
    assert sorted(wstrace.__all__) == [
        "Carried",
        "Config",
        "ConfigError",
        "ConnectionTracer",
        "EnvelopeDecodeError",
        "EnvelopeEncodeError",
        "EnvelopeError",
        "Stream",
        "TracedAsyncQueue",
        "TracedQueue",
        "TracedThreadPoolExecutor",
        "WstraceError",
        "__version__",
        "carry",
        "restore",
        "stream",
        "submit",
    ]
    assert wstrace.instrumentation.websockets.__all__ == ["WebsocketsInstrumentor", "server_options"]
    assert wstrace.instrumentation.socketio.__all__ == ["SocketioInstrumentor"]
    assert wstrace.instrumentation.channels.__all__ == ["GROUP_SPANS_ENV", "LAYER_CARRIER_ENV", "ChannelsInstrumentor"]
    for name in wstrace.__all__:
        assert getattr(wstrace, name) is not None


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_import_loads_no_websocket_library_and_no_sdk() -> None:
    """``import wstrace`` (and the adapter module) loads neither websockets nor the OpenTelemetry SDK."""
    for statement in (
        "import wstrace",
        "import wstrace.instrumentation.websockets",
        "import wstrace.instrumentation.socketio",
        "import wstrace.instrumentation.channels",
        "import wstrace.redis",
    ):
        loaded = _loaded_after(statement)
        assert "wstrace" in loaded
        heavy = {
            m
            for m in loaded
            if m.split(".")[0]
            in (
                "websockets",
                "aiohttp",
                "tornado",
                "starlette",
                "websocket",
                "redis",
                "socketio",
                "engineio",
                "channels",
                "channels_redis",
                "django",
            )
        }
        assert heavy == set(), f"{statement} loaded {sorted(heavy)}"
        assert not {m for m in loaded if m.startswith("opentelemetry.sdk")}, statement
