# Two commands: `make run` starts the demo box, `make test` checks everything.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA_DIR ?= data
HOST ?= 127.0.0.1
PORT ?= 8080

.PHONY: run test lint typecheck pytest bench clean assets wheel

$(BIN)/stockverify: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.test-extras: $(BIN)/stockverify
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

# The pages' third-party code (package.json) bundled into web/static/vendor, which the box serves; a
# provisioned box installs a wheel holding the built files and needs no node.
VENDOR := web/static/vendor/.built
$(VENDOR): package.json package-lock.json $(wildcard web/vendor/*.js)
	@command -v npm >/dev/null || { echo "make: node and npm are needed to build the handheld page's assets (web/vendor -> web/static/vendor): apt-get install nodejs npm" >&2; exit 1; }
	npm ci --no-audit --no-fund --loglevel=error
	npm run --silent build
	touch $@

assets: $(VENDOR)

wheel: $(VENDOR) $(BIN)/stockverify
	$(BIN)/python -m pip wheel --quiet --no-deps --wheel-dir dist .

run: $(BIN)/stockverify $(VENDOR)
	$(BIN)/stockverify serve --data-dir $(DATA_DIR) --host $(HOST) --port $(PORT) --demo

test: $(VENV)/.test-extras $(VENDOR)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/pytest

bench: $(VENV)/.test-extras $(VENDOR)
	for f in tests/bench/bench_*.py; do m=$${f%.py}; echo "== $$m"; $(BIN)/python -m $${m//\//.} || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache node_modules web/static/vendor dist
