# Benchmarks (see docs/performance.md). Everything runs on 127.0.0.1 only.
PYTHON ?= .venv/bin/python
REPS ?= 3
BENCH_OUT ?= benchmarks/results/latest.json

.PHONY: bench bench-quick bench-micro bench-large bench-profile bench-timers bench-deps upstream-tests docs

# The full suite: every workload, stack and variant, interleaved; about 10 minutes on 2 cores.
bench:
	$(PYTHON) -m benchmarks.run --reps $(REPS) --out $(BENCH_OUT) --markdown $(BENCH_OUT:.json=.md)

# One rep with smaller counts: a smoke test of the suite, about 2 minutes.
bench-quick:
	$(PYTHON) -m benchmarks.run --quick --out benchmarks/results/quick.json

# In-process per-message costs, wstrace against the hand-written minimal instrumentation; about 1 minute.
bench-micro:
	$(PYTHON) -m benchmarks.micro --json benchmarks/results/micro.json

# 1 MiB and 16 MiB messages: time, CPU and peak memory, bare against wstrace; about 3 minutes.
bench-large:
	$(PYTHON) -m benchmarks.large --senders websockets,websocket-client --json benchmarks/results/large.json

# Where a server's CPU time goes, by layer (py-spy); VARIANT, WORKLOAD and STACK select the server.
WORKLOAD ?= echo64
STACK ?= websockets
VARIANT ?= wstrace message, envelope off
bench-profile:
	$(PYTHON) -m benchmarks.profile --workload $(WORKLOAD) --stack $(STACK) --variant "$(VARIANT)"

# Exact time per call of wstrace's entry points (and the SDK's) inside one server variant; about 10 s.
bench-timers:
	$(PYTHON) -m benchmarks.timers --workload $(WORKLOAD) --stack $(STACK) --variant "$(VARIANT)"

# Optional tools: py-spy and pyinstrument in the venv; ddtrace (and what it needs) in benchmarks/.deps,
# outside the venv, because ddtrace registers a pytest plugin that the test suite should not load.
bench-deps:
	$(PYTHON) -m pip install py-spy pyinstrument
	$(PYTHON) -m pip install --no-deps --target benchmarks/.deps \
		ddtrace==4.16.0 bytecode==0.19.1 envier==0.6.1 ddtrace-internal==0.1.0

# The WebSocket tests of tornado, Starlette, FastAPI, aiohttp and websocket-client, bare and instrumented
# (docs/reliability.md); downloads sdists, installs into its own venv under /tmp; about 5 minutes.
UPSTREAM_ARGS ?=
upstream-tests:
	scripts/upstream-tests $(UPSTREAM_ARGS)

# The documentation site from docs/ (MkDocs, Material theme), served on http://127.0.0.1:8000 with live reload.
docs:
	NO_MKDOCS_2_WARNING=1 $(PYTHON) -m mkdocs serve
