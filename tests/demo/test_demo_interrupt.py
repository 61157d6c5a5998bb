"""Ctrl-C on a real ``wstrace demo``: it ends quietly, with status 130, and leaves no server behind (with ``--stack
socketio``, no gateway, assistant or redis-server)."""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.redis_server import require_redis_server


ROOT = Path(__file__).resolve().parent.parent.parent


# When to press Ctrl-C: a line of the demo's progress, while the server works on a turn or the device speaks.
MOMENTS = {
    "during speech_to_text": r"turn 1 +(server|assistant) +speech_to_text",
    "after the first reply": r"turn 1 +device +◀ first reply audio",
    "during the second turn": r"turn 2 +device +▶",
}
# The processes the demo starts, each named with its pid in a line of its own: the server; the gateway, the
# assistant and the private redis-server.
CHILDREN = {"websockets": 1, "socketio": 3}


@pytest.mark.skipif(sys.platform == "win32", reason="process groups and SIGINT are POSIX")
@pytest.mark.parametrize("stack", sorted(CHILDREN))
@pytest.mark.parametrize("moment", sorted(MOMENTS))
def test_ctrl_c_ends_the_demo_quietly(tmp_path: Path, moment: str, stack: str) -> None:
    """SIGINT to the demo's process group, as a terminal sends it, mid-conversation: exit status 130, no
    traceback or error from any process, and every process the demo started is gone."""
    if stack == "socketio":
        require_redis_server([shutil.which("redis-server")], os.environ)
    env = {**os.environ, "COLUMNS": "140", "PYTHONIOENCODING": "utf-8", "PYTHONPATH": str(ROOT / "src")}
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    out = str(tmp_path / "trace.jsonl")
    demo = subprocess.Popen(
        [sys.executable, "-m", "wstrace.cli", "demo", "--stack", stack, "--turns", "5", "--out", out],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        env=env,
        start_new_session=True,  # its own process group, like a terminal's foreground job
    )
    lines: queue.Queue[str] = queue.Queue()
    assert demo.stdout is not None
    threading.Thread(target=lambda: [lines.put(line) for line in demo.stdout or ()], daemon=True).start()
    children: list[int] = []
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # until the server is working on the first turn
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                assert demo.poll() is None, f"the demo ended early: {seen}"
                continue
            seen.append(line)
            if match := re.search(r"\(pid (\d+),", line):
                children.append(int(match[1]))
            if re.match(MOMENTS[moment], line):
                break
        else:
            pytest.fail(f"never reached {moment}: {seen}")
        os.killpg(demo.pid, signal.SIGINT)
        _, stderr = demo.communicate(timeout=60)
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.communicate()
    assert demo.returncode == 130, stderr
    assert "Traceback" not in stderr and "ERROR" not in stderr, stderr
    assert stderr.strip() == "wstrace demo: interrupted"
    assert len(children) == CHILDREN[stack], seen
    for pid in children:
        for _ in range(100):  # the demo waited for it; allow the kernel a moment to reap it
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            pytest.fail(f"process {pid} outlived the demo: {seen}")
