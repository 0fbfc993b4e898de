# Billow: `make demo` runs the seed's example on the embedded control plane;
# `make test` runs lint, type checks and every test tier. Both create .venv themselves.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PYTEST_ARGS ?= --durations=25

.PHONY: demo test lint typecheck unit integration e2e bench clean

$(VENV)/.installed-server: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -U pip
	$(BIN)/python -m pip install -q -e '.[server]'
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed-server
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

demo: $(VENV)/.installed-server
	$(BIN)/python -m billow.demo

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check sdk functions tests
	$(BIN)/ruff format --check sdk functions tests

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/python -m pytest -m "unit or integration or e2e" $(PYTEST_ARGS)

unit integration e2e: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -m $@ $(PYTEST_ARGS)

bench: $(VENV)/.installed-dev
	$(BIN)/python -m tests.bench.bench_start
	$(BIN)/python -m tests.bench.bench_cold_import
	$(BIN)/python -m tests.bench.bench_watchdog
	$(BIN)/python -m tests.bench.bench_package_sync
	$(BIN)/python -m tests.bench.bench_cost

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
