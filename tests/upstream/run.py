"""Run the WebSocket parts of the libraries' own test suites bare and instrumented, and compare.

"A test that passes bare and fails instrumented is our bug." For each library this

1. installs, in a venv of its own (never the project's ``.venv``), wstrace from this checkout (editable), the
   library at the version the project's ``.venv`` has (or, without one, whatever resolves), and what the
   chosen test files import;
2. downloads the library's sdist for exactly the installed version from PyPI and copies the chosen test files
   into a scratch directory (third-party source never enters the repository);
3. runs them with pytest once bare and once per model with every wstrace adapter instrumented
   (``wstrace_upstream_plugin``), each run bounded in time;
4. prints, per library and model: tests run, passed bare, passed instrumented, and the regressions (passed
   bare, failed instrumented), each re-run alone, bare and instrumented, to tell a real one from a flaky one.

Usage: ``scripts/upstream-tests [--libraries tornado,starlette] [--models message,connection] ...``
(``--help``). Everything listens on 127.0.0.1. Exit status: 0 no regression, 1 regressions, 2 harness error.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional


HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
PLUGIN = "wstrace_upstream_plugin"

# What the chosen test files need besides the libraries (pytest plugins, optional test helpers the
# libraries' conftests use when present, as in their own CI).
TEST_REQUIREMENTS = [
    "opentelemetry-sdk",
    "pytest",
    "pytest-timeout",
    "pytest-mock",
    "freezegun",
    "blockbuster",
    "trustme",
    "trio",
    "httpx2",
    "httpx",
    "dirty-equals",
    "inline-snapshot",
    "python-multipart",
    "itsdangerous",
    "jinja2",
    "pyyaml",
    "coverage",  # aiohttp's warning filters name its warning class
    "pytest-xdist",  # registers the xdist_group marker FastAPI's tests use; runs stay in one process
]


@dataclass
class Suite:
    """One library's chosen tests."""

    name: str
    distribution: str
    """PyPI name of the distribution whose sdist holds the tests."""
    prepare: Callable[[Path, Path], None]
    """``prepare(sdist_root, scratch)`` copies the tests and writes the pytest configuration."""
    files: list[str]
    """Test files and directories, relative to the scratch directory."""
    options: list[str] = field(default_factory=list)
    """Other pytest arguments: ``-k`` (the whole run), ``-o`` (also used when re-running one test)."""
    needs: list[str] = field(default_factory=list)
    """Other distributions the tests import (pinned like the library when the reference venv has them)."""
    note: str = ""


def _copy(src: Path, dst: Path) -> None:
    if src.is_dir():
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    else:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)


def _prepare_tornado(sdist: Path, scratch: Path) -> None:
    # websocket_test.py imports tornado.test.util, which the installed tornado ships (same version).
    _copy(sdist / "tornado/test/websocket_test.py", scratch / "websocket_test.py")
    _copy(HERE / "tornado_conftest.py", scratch / "conftest.py")
    # The warning filters of tornado.test.runtests.
    (scratch / "pytest.ini").write_text(
        "[pytest]\n"
        "filterwarnings =\n"
        "    error\n"
        "    ignore::ImportWarning\n"
        "    ignore::DeprecationWarning\n"
        "    error::DeprecationWarning:tornado\\..*\n"
        "    ignore::PendingDeprecationWarning\n"
        "    ignore::pytest.PytestCollectionWarning\n"
    )


def _prepare_websocket_client(sdist: Path, scratch: Path) -> None:
    _copy(sdist / "websocket/tests", scratch / "tests")
    _copy(HERE / "websocket_client_conftest.py", scratch / "conftest.py")
    (scratch / "pytest.ini").write_text("[pytest]\n")


def _prepare_with_tests_dir(*extra: str) -> Callable[[Path, Path], None]:
    """Copy ``tests/`` (a package, with its conftest and helpers), ``extra`` paths and the pytest config."""

    def prepare(sdist: Path, scratch: Path) -> None:
        _copy(sdist / "tests", scratch / "tests")
        for path in extra:
            _copy(sdist / path, scratch / path)
        for config in ("pytest.ini", "pyproject.toml", "setup.cfg", ".coveragerc.toml"):
            if (sdist / config).exists():
                _copy(sdist / config, scratch / config)

    return prepare


# pytest-asyncio, which python-socketio's tests need, is in the one venv every library shares; suites that
# run on their own plugin (anyio, aiohttp's) and turn warnings into errors stop at its configuration warning.
NO_ASYNCIO = ["-p", "no:asyncio"]

SUITES: dict[str, Suite] = {
    "tornado": Suite(
        "tornado",
        "tornado",
        _prepare_tornado,
        ["websocket_test.py"],
        note="tornado.test.runtests' rule applied per test: a log line at INFO or above outside ExpectLog fails",
    ),
    "starlette": Suite(
        "starlette",
        "starlette",
        _prepare_with_tests_dir(),
        [
            "tests/test_websockets.py",
            "tests/test_testclient.py",
            "tests/test_endpoints.py",
            "tests/test_routing.py",
            "tests/test_applications.py",
            "tests/test_authentication.py",
            "tests/middleware",
        ],
        options=["-k", "websocket", *NO_ASYNCIO],
        needs=["anyio"],
        note="TestClient, no server: the ASGI middleware on every app (bare ASGI apps wrapped by the plugin)",
    ),
    "fastapi": Suite(
        "fastapi",
        "fastapi",
        _prepare_with_tests_dir("docs_src"),
        ["tests/test_ws_router.py", "tests/test_ws_dependencies.py", "tests/test_tutorial/test_websockets"],
        options=NO_ASYNCIO,
        needs=["starlette", "pydantic"],
    ),
    "aiohttp": Suite(
        "aiohttp",
        "aiohttp",
        _prepare_with_tests_dir(),
        [
            "tests/test_web_websocket.py",
            "tests/test_web_websocket_functional.py",
            "tests/test_client_ws.py",
            "tests/test_client_ws_functional.py",
            "tests/test_websocket_handshake.py",
        ],
        # Upstream addopts load xdist and coverage; keep the rest.
        options=["-o", "addopts=--strict-markers -m 'not dev_mode and not autobahn and not internal'", *NO_ASYNCIO],
        needs=["multidict", "yarl", "aiosignal"],
    ),
    "websocket-client": Suite(
        "websocket-client",
        "websocket-client",
        _prepare_websocket_client,
        ["tests"],
        needs=["websockets"],
        note="its local-server tests against the websockets echo server of its CI, started in-process",
    ),
    "python-socketio": Suite(
        "python-socketio",
        "python-socketio",
        _prepare_with_tests_dir(),
        [
            "tests/async/test_server.py",
            "tests/async/test_client.py",
            "tests/async/test_manager.py",
            "tests/async/test_pubsub_manager.py",
            "tests/async/test_namespace.py",
            "tests/async/test_simple_client.py",
            "tests/common",
        ],
        # As its tox.ini runs them. The admin tests start real servers and outlast the time limit bare; the Redis
        # manager tests import valkey.
        options=[
            "-p",
            "no:logging",
            "--ignore=tests/common/test_admin.py",
            "--ignore=tests/common/test_redis_manager.py",
        ],
        needs=["python-engineio", "msgpack", "pytest-asyncio"],
        note="its asyncio (the adapter's stage 1) and threaded unit tests, asyncio_mode=auto from its pyproject",
    ),
    "websockets": Suite(
        "websockets",
        "websockets",
        lambda sdist, scratch: None,
        ["tests/asyncio", "tests/sync"],
        note="the sdist ships no tests",
    ),
}
DEFAULT_LIBRARIES = ["tornado", "starlette", "fastapi", "aiohttp", "websocket-client", "websockets", "python-socketio"]
# Installed in the venv for every run, so that every adapter is exercised whatever the suite.
LIBRARIES_ALWAYS = ["tornado", "aiohttp", "starlette", "fastapi", "websockets", "websocket-client", "python-socketio"]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def reference_versions(python: Optional[str], names: list[str]) -> dict[str, str]:
    """Versions of ``names`` installed for ``python`` (read only), as pins for the harness venv."""
    if not python or not Path(python).exists():
        return {}
    code = (
        "import json, sys\n"
        "from importlib import metadata\n"
        "out = {}\n"
        "for name in sys.argv[1:]:\n"
        "    try: out[name] = metadata.version(name)\n"
        "    except metadata.PackageNotFoundError: pass\n"
        "print(json.dumps(out))\n"
    )
    result = subprocess.run([python, "-c", code, *names], capture_output=True, text=True, check=True)
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def ensure_venv(venv: Path, requirements: list[str]) -> Path:
    """Create (or reuse) the harness venv with wstrace (editable) and ``requirements``."""
    python = venv / "bin" / "python"
    stamp = venv / ".wstrace-upstream"
    want = hashlib.sha256(("\n".join(requirements) + (REPO / "pyproject.toml").read_text()).encode()).hexdigest()
    if python.exists() and stamp.exists() and stamp.read_text() == want:
        return python
    if not python.exists():
        log(f"creating venv {venv}")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "--disable-pip-version-check", "install", "--quiet"]
    log("installing wstrace (editable), the libraries and their test requirements")
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "-e", str(REPO), *requirements], check=True)
    stamp.write_text(want)
    return python


def installed_versions(python: Path, names: list[str]) -> dict[str, str]:
    return reference_versions(str(python), names)


def sdist_root(python: Path, workdir: Path, distribution: str, version: str) -> Path:
    """The extracted sdist of ``distribution==version`` (downloaded once)."""
    downloads = workdir / "sdist"
    downloads.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[-_.]+", "_", distribution).lower()
    found = [
        p
        for p in downloads.glob("*.tar.gz")
        if re.sub(r"[-_.]+", "_", p.name).lower().startswith(f"{stem}_{version.replace('.', '_')}_tar")
    ]
    if not found:
        log(f"downloading the {distribution} {version} sdist")
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "--disable-pip-version-check",
                "download",
                "--quiet",
                "--no-deps",
                "--no-binary",
                ":all:",
                f"{distribution}=={version}",
                "-d",
                str(downloads),
            ],
            check=True,
        )
        return sdist_root(python, workdir, distribution, version)
    archive = found[0]
    target = workdir / "src"
    root = target / archive.name[: -len(".tar.gz")]
    if not root.exists():
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tar:
            if hasattr(tarfile, "data_filter"):  # Python 3.10.12+, 3.11.4+
                tar.extractall(target, filter="data")
            else:
                tar.extractall(target)  # an sdist from PyPI, into a scratch directory
    return root


@dataclass
class Run:
    header: dict[str, object]
    tests: dict[str, dict[str, object]]
    timed_out: bool
    seconds: float
    log: Path


def run_pytest(
    python: Path,
    scratch: Path,
    args: list[str],
    model: str,
    envelope: str,
    out: Path,
    timeout: float,
    test_timeout: int,
) -> Run:
    """One pytest run in ``scratch``; ``model`` ``bare`` instruments nothing."""
    report = out.with_suffix(".jsonl")
    log_path = out.with_suffix(".log")
    report.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WSTRACE_", "OTEL_", "PYTEST_"))}
    env.update(
        WSTRACE_UPSTREAM_MODEL=model,
        WSTRACE_UPSTREAM_ENVELOPE=envelope,
        WSTRACE_UPSTREAM_REPORT=str(report),
        PYTHONPATH=str(HERE),
        PYTHONDONTWRITEBYTECODE="1",
    )
    command = [
        str(python),
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-p",
        PLUGIN,
        "-q",
        "-rN",
        f"--timeout={test_timeout}",
        "--color=no",
        *args,
    ]
    started = time.monotonic()
    timed_out = False
    with open(log_path, "w") as output:
        output.write(" ".join(command) + "\n")
        output.flush()
        process = subprocess.Popen(
            command, cwd=scratch, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(process.pid, signal.SIGKILL)  # the run's own process group, nothing else
            process.wait()
    header: dict[str, object] = {}
    tests: dict[str, dict[str, object]] = {}
    if report.exists():
        for line in report.read_text().splitlines():
            entry = json.loads(line)
            if "header" in entry:
                header = entry["header"]
            else:
                tests[entry["nodeid"]] = entry
    return Run(header, tests, timed_out, time.monotonic() - started, log_path)


def first_error_line(text: str) -> str:
    """The most telling line of a failure: the last ``E   `` line, else the last non-empty one."""
    lines = [line for line in str(text).splitlines() if line.strip()]
    errors = [line[1:].strip() for line in lines if line.startswith("E ")]
    found = errors[0] if errors else (lines[-1].strip() if lines else "")
    return found[:240]


PASSING = ("passed",)


@dataclass
class Row:
    library: str
    version: str
    model: str
    run: int = 0
    passed_bare: int = 0
    passed_instrumented: int = 0
    traced: int = 0
    regressions: list[dict[str, object]] = field(default_factory=list)
    fixed: list[str] = field(default_factory=list)
    status: str = ""


def compare(library: str, version: str, model: str, bare: Run, instrumented: Run) -> Row:
    row = Row(library, version, model)
    row.run = len(bare.tests)
    row.passed_bare = sum(1 for t in bare.tests.values() if t["outcome"] in PASSING)
    row.passed_instrumented = sum(1 for t in instrumented.tests.values() if t["outcome"] in PASSING)
    row.traced = sum(1 for t in instrumented.tests.values() if t.get("spans"))
    for nodeid, test in bare.tests.items():
        other = instrumented.tests.get(nodeid)
        if test["outcome"] in PASSING and (other is None or other["outcome"] not in PASSING):
            outcome = "not run instrumented (time limit or crash)" if other is None else str(other["outcome"])
            text = "" if other is None else str(other.get("text", ""))
            row.regressions.append(
                {"nodeid": nodeid, "outcome": outcome, "error": first_error_line(text), "text": text}
            )
        elif other is not None and other["outcome"] in PASSING and test["outcome"] in ("failed", "error"):
            row.fixed.append(nodeid)
    notes = []
    if bare.timed_out or instrumented.timed_out:
        notes.append(
            "time limit hit ("
            + ", ".join(name for name, run in (("bare", bare), (model, instrumented)) if run.timed_out)
            + ")"
        )
    if not bare.tests:
        notes.append(f"no test ran bare, see {bare.log}")
    elif instrumented.tests and not instrumented.header.get("adapters"):
        notes.append(f"nothing was instrumented, see {instrumented.log}")
    row.status = "; ".join(notes)
    return row


def _ini_options(args: list[str]) -> list[str]:
    """The ``-o NAME=VALUE`` pairs of a suite's options, for re-running one test."""
    return [part for i, arg in enumerate(args[:-1]) if arg == "-o" for part in (arg, args[i + 1])]


def confirm(
    python: Path,
    scratch: Path,
    row: Row,
    envelope: str,
    out_dir: Path,
    timeout: float,
    test_timeout: int,
    limit: int,
) -> None:
    """Re-run each regression alone, instrumented then bare: ``yes`` if it fails and passes again, else ``flaky``."""
    options = _ini_options(SUITES[row.library].options)
    for i, regression in enumerate(row.regressions):
        if i >= limit:
            regression["confirmed"] = "not re-run"
            continue
        nodeid = str(regression["nodeid"])
        again = run_pytest(
            python,
            scratch,
            [*options, nodeid],
            row.model,
            envelope,
            out_dir / f"{row.library}-{row.model}-confirm-{i}",
            timeout,
            test_timeout,
        )
        bare = run_pytest(
            python,
            scratch,
            [*options, nodeid],
            "bare",
            envelope,
            out_dir / f"{row.library}-{row.model}-confirm-{i}-bare",
            timeout,
            test_timeout,
        )
        fails = not again.tests or any(t["outcome"] not in PASSING for t in again.tests.values())
        passes = bool(bare.tests) and all(t["outcome"] in PASSING for t in bare.tests.values())
        regression["confirmed"] = "yes" if fails and passes else "flaky"


def table(rows: list[Row]) -> str:
    head = ["library", "version", "model", "tests run", "passed bare", "passed instr.", "traced", "regressions"]
    body = []
    for row in rows:
        if row.status and not row.run:
            body.append([row.library, row.version, row.model, "-", "-", "-", "-", row.status])
            continue
        count = str(len(row.regressions))
        flaky = sum(1 for r in row.regressions if r.get("confirmed") == "flaky")
        if flaky:
            count += f" ({flaky} flaky)"
        if row.status:
            count += f"; {row.status}"
        body.append(
            [
                row.library,
                row.version,
                row.model,
                str(row.run),
                str(row.passed_bare),
                str(row.passed_instrumented),
                str(row.traced),
                count,
            ]
        )
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in [head, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--libraries",
        default=",".join(DEFAULT_LIBRARIES),
        help=f"comma-separated, from {', '.join(SUITES)} (default: all)",
    )
    parser.add_argument("--models", default="message,connection", help="instrumented passes (default: both)")
    parser.add_argument("--envelope", default="negotiate", help="envelope mode of the instrumented passes")
    parser.add_argument(
        "--workdir",
        default="/tmp/wstrace-upstream",
        type=Path,
        help="scratch directory: sdists, test copies, logs, results (default: %(default)s)",
    )
    parser.add_argument("--venv", type=Path, help="the harness venv (default: WORKDIR/venv)")
    parser.add_argument(
        "--versions-from",
        default=str(REPO / ".venv/bin/python"),
        help="interpreter whose library versions to test (default: the project's .venv)",
    )
    parser.add_argument("--timeout", type=float, default=600, help="seconds per pytest run (default: 600)")
    parser.add_argument("--test-timeout", type=int, default=60, help="seconds per test (default: 60)")
    parser.add_argument(
        "--confirm",
        type=int,
        default=20,
        help="re-run at most this many regressions per library and model alone (default: 20)",
    )
    args = parser.parse_args(argv)

    libraries = [name.strip() for name in args.libraries.split(",") if name.strip()]
    unknown = [name for name in libraries if name not in SUITES]
    if unknown:
        parser.error(f"unknown libraries: {', '.join(unknown)}")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    workdir: Path = args.workdir.resolve()
    if workdir == REPO or REPO in workdir.parents:
        parser.error("--workdir must be outside the repository")
    workdir.mkdir(parents=True, exist_ok=True)
    venv: Path = (args.venv or workdir / "venv").resolve()

    distributions = sorted({*LIBRARIES_ALWAYS, *(n for s in SUITES.values() for n in s.needs)})
    pins = reference_versions(args.versions_from, distributions)
    log(
        "pinned from "
        + args.versions_from
        + ": "
        + (", ".join(f"{k}=={v}" for k, v in sorted(pins.items())) or "nothing (no such interpreter)")
    )
    requirements = [f"{name}=={pins[name]}" if name in pins else name for name in distributions]
    try:
        python = ensure_venv(venv, requirements + TEST_REQUIREMENTS)
    except subprocess.CalledProcessError as exc:
        log(f"could not set up the venv: {exc}")
        return 2
    versions = installed_versions(python, distributions)
    results = workdir / "results"
    if results.exists():
        shutil.rmtree(results)
    results.mkdir()

    rows: list[Row] = []
    for name in libraries:
        suite = SUITES[name]
        version = versions.get(suite.distribution, "?")
        try:
            root = sdist_root(python, workdir, suite.distribution, version)
        except subprocess.CalledProcessError:
            rows.append(Row(name, version, "-", status="sdist download failed"))
            continue
        scratch = workdir / "run" / name
        if scratch.exists():
            shutil.rmtree(scratch)
        scratch.mkdir(parents=True)
        suite.prepare(root, scratch)
        if not all((scratch / path).exists() for path in suite.files):
            rows.append(Row(name, version, "-", status=f"no tests in the sdist ({suite.note or 'missing files'})"))
            continue
        log(f"{name} {version}: bare")
        bare = run_pytest(
            python,
            scratch,
            [*suite.files, *suite.options],
            "bare",
            args.envelope,
            results / f"{name}-bare",
            args.timeout,
            args.test_timeout,
        )
        for model in models:
            log(f"{name} {version}: {model} (envelope {args.envelope})")
            instrumented = run_pytest(
                python,
                scratch,
                [*suite.files, *suite.options],
                model,
                args.envelope,
                results / f"{name}-{model}",
                args.timeout,
                args.test_timeout,
            )
            row = compare(name, version, model, bare, instrumented)
            if row.regressions and args.confirm:
                log(f"{name} {version}: re-running {len(row.regressions)} regression(s) alone")
                confirm(python, scratch, row, args.envelope, results, args.timeout, args.test_timeout, args.confirm)
            rows.append(row)

    print()
    print(table(rows))
    confirmed = [r for row in rows for r in row.regressions if r.get("confirmed", "yes") == "yes"]
    for row in rows:
        if row.regressions:
            print(f"\n{row.library} {row.version}, {row.model}: passed bare, failed instrumented")
        for regression in row.regressions:
            print(
                f"  {regression['nodeid']}  [{regression['outcome']}; confirmed alone: "
                f"{regression.get('confirmed', 'not re-run')}]"
            )
            print(f"      {regression['error']}")
        if row.fixed:
            print(f"\n{row.library} {row.version}, {row.model}: failed bare, passed instrumented (flaky?)")
            print("".join(f"  {nodeid}\n" for nodeid in row.fixed), end="")
    summary = workdir / "results" / "summary.json"
    summary.write_text(json.dumps([row.__dict__ for row in rows], indent=2, default=str))
    print(f"\nlogs and per-test reports: {results}; summary: {summary}")
    return 1 if confirmed else 0


if __name__ == "__main__":
    sys.exit(main())
