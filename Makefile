# Two commands: `make run` starts the demo box, `make test` checks everything.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA_DIR ?= data
HOST ?= 127.0.0.1
PORT ?= 8080

.PHONY: run test lint typecheck pytest bench clean

$(BIN)/stockverify: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.test-extras: $(BIN)/stockverify
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

run: $(BIN)/stockverify
	$(BIN)/stockverify serve --data-dir $(DATA_DIR) --host $(HOST) --port $(PORT) --demo

test: $(VENV)/.test-extras
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/pytest

bench: $(VENV)/.test-extras
	for f in tests/bench/bench_*.py; do m=$${f%.py}; echo "== $$m"; $(BIN)/python -m $${m//\//.} || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
