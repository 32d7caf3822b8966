# errands — the two commands of the README are `make serve` and `make test`.
# Everything else here is a helper they use.

PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
	&& { echo $$p; break; }; done)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: test lint serve bench soak load-soak clean tools

# The strict editable install links each file, so adding or removing a module
# (which changes its folder's mtime) must reinstall.
$(STAMP): pyproject.toml engine backends adapters
	@test -n "$(PYTHON)" || { echo "errands needs Python 3.11 or newer on PATH"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[test,lint]" --config-settings editable_mode=strict
	@touch $(STAMP)

## Serve the example image-generation service on http://127.0.0.1:3000
## (durable backend in ./.errands; Ctrl-C drains and stops).
serve: $(STAMP)
	$(BIN)/errands serve examples/image_generation.py:ImageGenerationService --port 3000

# The stock BentoML clients, for the wire-compatibility tests.  BentoML pins
# versions errands cannot share (cattrs), so it lives in a venv of its own.
# Pinned: from 1.4.30 on, SyncHTTPClient's task submit always raises
# AttributeError ('_opened_files', renamed to '_file_manager' but for one use).
BENTO_VENV := .venv-bentoml
BENTO_STAMP := $(BENTO_VENV)/.installed-stamp

$(BENTO_STAMP): Makefile
	@test -n "$(PYTHON)" || { echo "errands needs Python 3.11 or newer on PATH"; exit 1; }
	$(PYTHON) -m venv $(BENTO_VENV)
	$(BENTO_VENV)/bin/python -m pip install -q --upgrade pip
	$(BENTO_VENV)/bin/python -m pip install -q "bentoml==1.4.29"
	@touch $(BENTO_STAMP)

# schemathesis, for the OpenAPI test (tests/adapters/test_schemathesis.py), which
# runs its command.  A venv of its own: its pins (pytest<10, hypothesis<7, ...)
# must not hold back the project's, nor its pytest plugin load into our suite.
# Pinned: a new release adds checks, and the test would fail for that alone.
SCHEMATHESIS_VENV := .venv-schemathesis
SCHEMATHESIS_STAMP := $(SCHEMATHESIS_VENV)/.installed-stamp

$(SCHEMATHESIS_STAMP): Makefile
	@test -n "$(PYTHON)" || { echo "errands needs Python 3.11 or newer on PATH"; exit 1; }
	$(PYTHON) -m venv $(SCHEMATHESIS_VENV)
	$(SCHEMATHESIS_VENV)/bin/python -m pip install -q --upgrade pip
	$(SCHEMATHESIS_VENV)/bin/python -m pip install -q "schemathesis==4.32.5"
	@touch $(SCHEMATHESIS_STAMP)

# Programs some tests need: Debian's redis-server (the Redis backend's tests
# start their own, on 127.0.0.1) and Chromium (the browser tests; Playwright
# drives it, its own browser download is not used).  Installed when missing
# and apt-get is here (as root or with sudo); elsewhere (macOS) one already
# on PATH is used, or those tests are skipped, loudly (under CI they fail).
TOOLS := redis-server chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

tools:
	@missing=""; for tool in $(TOOLS); do \
		command -v $$tool >/dev/null 2>&1 || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing$$missing (Debian packages)"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	elif [ -n "$$missing" ]; then \
		echo "*** not found:$$missing -- the tests that need them will be SKIPPED ***" >&2; \
	fi

## Lint, type-check and run the whole test suite.
# The three venvs are built side by side (about 70 s instead of 100 s on a
# fresh clone with 2 cores): each pip works in its own folder.
# Two pytest workers (pytest-xdist): most of the suite waits on servers,
# subprocesses and sockets, so two halves side by side take about 56% of
# the serial time here (579 -> 326 s), on 2 cores as on more.
test: tools
	$(MAKE) -j3 lint $(BENTO_STAMP) $(SCHEMATHESIS_STAMP)
	ERRANDS_BENTOML_PYTHON=$(CURDIR)/$(BENTO_VENV)/bin/python \
	ERRANDS_SCHEMATHESIS=$(CURDIR)/$(SCHEMATHESIS_VENV)/bin/schemathesis \
	$(BIN)/python -m pytest -n 2

lint: $(STAMP)
	$(BIN)/ruff check engine backends adapters tests examples benchmarks
	$(BIN)/ruff format --check engine backends adapters tests examples benchmarks
	$(BIN)/mypy -p errands

## Benchmarks (not tests): each prints its figure beside a same-run reference.
bench: $(STAMP)
	$(BIN)/python benchmarks/inprocess.py
	$(BIN)/python benchmarks/disk.py
	$(BIN)/python benchmarks/http.py
	$(BIN)/python benchmarks/vs_bentoml.py
	$(BIN)/python benchmarks/clients.py
	$(BIN)/python benchmarks/threadpath.py
	$(BIN)/python benchmarks/memory.py
	$(BIN)/python benchmarks/batching.py
	$(BIN)/python benchmarks/batch_submit.py
	$(BIN)/python benchmarks/batch_reads.py
	$(BIN)/python benchmarks/payloads.py
	$(BIN)/python benchmarks/deep_queue.py
	$(BIN)/python benchmarks/load.py

## Soak: 200 kill -9 cycles on one diskcache directory (about two minutes); prints
## tasks, lost, re-runs and the longest recovery.
soak: $(STAMP)
	ERRANDS_SOAK_CYCLES=200 $(BIN)/python -m pytest tests/backends/test_disk_kill_loop.py -q -s -p no:cacheprovider

## Load soak: 64 clients on every task route of errands serve (diskcache) for five
## minutes; prints the server's RSS every 10 s and its growth after the first minute.
## Then the bounded-memory upload at full size: 100,000 lines (a 100 MB body).
load-soak: $(STAMP)
	$(BIN)/python benchmarks/load.py --soak 300
	ERRANDS_UPLOAD_LINES=100000 $(BIN)/python -m pytest tests/adapters/test_batches_http.py -k large_upload -q -s -p no:cacheprovider

clean:
	rm -rf $(VENV) $(BENTO_VENV) $(SCHEMATHESIS_VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
