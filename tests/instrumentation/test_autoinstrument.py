"""Zero-code instrumentation: ``opentelemetry-instrument`` runs apps unchanged and skips what it cannot instrument."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.console import console_spans


ROOT = Path(__file__).resolve().parents[2]
INSTRUMENT = str(Path(sys.executable).parent / "opentelemetry-instrument")


def instrumented(args: list[str], extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WSTRACE_", "OTEL_"))}
    env.update(
        OTEL_TRACES_EXPORTER="console",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
        OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="asyncio,threading",
    )
    env.update(extra_env or {})
    return subprocess.run([INSTRUMENT, *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)


def test_example_app_is_traced_with_no_code_change() -> None:
    """The plain echo example, run under opentelemetry-instrument, is traced end to end."""
    result = instrumented([sys.executable, "examples/echo_app.py"])
    assert result.returncode == 0, result.stderr
    assert "echo: hello" in result.stdout and "echo: world" in result.stdout
    spans = console_spans(result.stdout)
    by_id = {s["context"]["span_id"]: s for s in spans}
    # websockets has no router and WSTRACE_ROUTES is unset: as in OpenTelemetry's HTTP conventions, the
    # names carry no path, and no http.route (which metrics would turn into unbounded cardinality).
    receives = [s for s in spans if s["name"] == "receive" and s["kind"] == "SpanKind.CONSUMER"]
    assert len(receives) == 4  # two on each side
    # Every server receive continues a client send through the negotiated envelope.
    continued = [r for r in receives if by_id.get(r["parent_id"] or "", {}).get("name") == "send"]
    assert len(continued) == 4
    assert {s["attributes"].get("websocket.envelope") for s in spans if s["name"] == "GET"} == {"frame"}
    assert not [s["name"] for s in spans if "http.route" in s["attributes"]]


def test_env_options_reach_the_instrumentor() -> None:
    """WSTRACE_MODEL, WSTRACE_ENVELOPE and WSTRACE_ROUTES configure the zero-code path."""
    options = {"WSTRACE_MODEL": "connection", "WSTRACE_ENVELOPE": "off", "WSTRACE_ROUTES": "/echo"}
    result = instrumented([sys.executable, "examples/echo_app.py"], options)
    assert result.returncode == 0, result.stderr
    spans = console_spans(result.stdout)
    assert len({s["context"]["trace_id"] for s in spans}) == 1, "connection model: one trace"
    assert sum(1 for s in spans if s["name"] == "websocket /echo") == 2
    assert {s["attributes"].get("websocket.envelope") for s in spans if s["name"] == "GET /echo"} == {"none"}
    assert {s["attributes"].get("http.route") for s in spans if s["kind"] == "SpanKind.SERVER"} == {"/echo"}


# (adapter module, Instrumentor class, import name of the library, distribution name)
ADAPTERS = [
    ("websockets", "WebsocketsInstrumentor", "websockets", "websockets"),
    ("aiohttp", "AiohttpInstrumentor", "aiohttp", "aiohttp"),
    ("starlette", "StarletteInstrumentor", "starlette", "starlette"),
    ("websocket_client", "WebsocketClientInstrumentor", "websocket", "websocket_client"),
    ("tornado", "TornadoInstrumentor", "tornado", "tornado"),
    ("socketio", "SocketioInstrumentor", "socketio", "python_socketio"),
    ("channels", "ChannelsInstrumentor", "channels", "channels"),
]


@pytest.mark.parametrize(("case", "expected"), [("installed", True), ("missing", False), ("out-of-range", False)])
@pytest.mark.parametrize(("adapter", "cls", "module", "dist"), ADAPTERS)
def test_unusable_library_is_skipped_not_fatal(
    tmp_path: Path, adapter: str, cls: str, module: str, dist: str, case: str, expected: bool
) -> None:
    """A missing library, or one outside the declared range, is skipped; the app and the other adapters start."""
    if case == "missing":
        # A package that shadows the library and fails to import, as if it were absent.
        (tmp_path / module).mkdir()
        (tmp_path / module / "__init__.py").write_text(f'raise ModuleNotFoundError("No module named {module}")\n')
    elif case == "out-of-range":
        # Metadata found first on the path claims a version the adapter does not support; the other
        # libraries keep the distribution's instruments-any check satisfied, so the adapter's own check decides.
        info = tmp_path / f"{dist}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    probe = (
        f"from wstrace.instrumentation.{adapter} import {cls}; "
        "from wstrace.instrumentation.websockets import WebsocketsInstrumentor as W; "
        f"print('instrumented', {cls}().is_instrumented_by_opentelemetry, W().is_instrumented_by_opentelemetry)"
    )
    result = instrumented([sys.executable, "-c", probe], {"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    others_ok = adapter != "websockets" or expected
    assert result.stdout.strip().splitlines()[-1] == f"instrumented {expected} {others_ok}"
    assert "Traceback" not in result.stderr


def test_each_skip_message_names_its_own_library_only(tmp_path: Path) -> None:
    """With every library outside its range, each entry point says why it skips, naming only its library."""
    for _, _, _, dist in ADAPTERS:
        info = tmp_path / f"{dist}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    result = instrumented([sys.executable, "-c", "print('app ran')"], {"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 0 and result.stdout.strip() == "app ran", result.stderr
    lines = [line for line in result.stderr.splitlines() if "only instruments" in line or "any of" in line]
    named: dict[str, list[str]] = {}
    for adapter, _, _, _ in ADAPTERS:
        entry = f"wstrace-{adapter.replace('_', '-')}"
        (line,) = [line for line in lines if f"{entry} " in line]
        named[entry] = [d for _, _, _, d in ADAPTERS if d.replace("_", "-") in line.replace("_", "-")]
    assert named == {f"wstrace-{a.replace('_', '-')}": [d] for a, _, _, d in ADAPTERS}, result.stderr
    assert "Traceback" not in result.stderr


def test_a_zero_code_app_writes_a_file_wstrace_view_renders(tmp_path: Path) -> None:
    """OTEL_TRACES_EXPORTER=wstrace_file selects wstrace's OTLP/JSON file exporter; WSTRACE_TRACES_FILE names
    the file, and ``wstrace view`` renders what it holds."""
    out = tmp_path / "traces" / "app.jsonl"
    options = {"OTEL_TRACES_EXPORTER": "wstrace_file", "WSTRACE_TRACES_FILE": str(out)}
    result = instrumented([sys.executable, "examples/echo_app.py"], options)
    assert result.returncode == 0, result.stderr
    assert "echo: hello" in result.stdout
    assert out.is_file(), result.stderr
    wstrace = str(Path(sys.executable).parent / "wstrace")
    view = subprocess.run(
        [wstrace, "view", str(out)], capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "160"}
    )
    assert view.returncode == 0, view.stderr
    assert "receive" in view.stdout and "send" in view.stdout
    spans = int(view.stdout.strip().splitlines()[-1].split()[0])
    assert spans >= 10  # two handshakes, four sends and receives, two closes at least
