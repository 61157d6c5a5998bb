"""The README's zero-code recipe, pasted into a fresh venv: the app is traced and its spans reach an OTLP/HTTP
receiver (a loopback stand-in for the Collector)."""

from __future__ import annotations

import os
import re
import subprocess
import venv
from pathlib import Path

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.demo.fakes import fake_collector, url


ROOT = Path(__file__).resolve().parents[2]
MARKER = "<!-- zero-code recipe"


def recipe() -> list[str]:
    """The command lines of the README block that follows the marker."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(re.escape(MARKER) + r".*?-->\n```bash\n(.*?)```", text, re.S)
    assert block is not None, "the README lost its zero-code recipe"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_the_recipe_works_as_pasted(tmp_path: Path) -> None:
    lines = recipe()
    assert lines[0].startswith("pip install './wstrace[websockets]'") and lines[-1].endswith("python app.py")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    (tmp_path / "wstrace").symlink_to(ROOT)  # the checkout, where the recipe expects it
    (tmp_path / "app.py").write_text((ROOT / "examples" / "echo_app.py").read_text(encoding="utf-8"))
    with fake_collector() as collector:
        script = "\n".join(["set -e", *lines]).replace("http://localhost:4318", url(collector))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "WSTRACE_", "PYTHON"))}
        env["PATH"] = f"{env_dir / 'bin'}:/usr/bin:/bin"  # as if the venv were activated
        done = subprocess.run(
            ["/bin/bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
        )
        requests = list(collector.requests)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "echo: hello" in done.stdout and "echo: world" in done.stdout
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    spans = []
    for path, body in requests:
        if path == "/v1/traces":
            request = ExportTraceServiceRequest.FromString(body)
            for resource_spans in request.resource_spans:
                service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}["service.name"]
                for scope in resource_spans.scope_spans:
                    spans += [(service, scope.scope.name, span.name) for span in scope.spans]
    ours = [(service, name) for service, scope, name in spans if scope == "wstrace"]
    assert {service for service, _ in ours} == {"chat"}
    assert sorted(name for _, name in ours if name in ("send", "receive")) == ["receive"] * 4 + ["send"] * 4
