# `make demo` trains the default recipe on Fashion-MNIST; `make test` runs lint + the test suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: setup data demo test test-fast lint format bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

data: setup
	PY=$(BIN)/python scripts/get-data.sh

demo: setup data
	$(BIN)/freebies train --recipe default --out runs/demo --overwrite

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: setup
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/ruff format src tests benchmarks

test: lint
	$(BIN)/pytest -q -n auto --dist loadfile

test-fast: setup
	$(BIN)/pytest -q -n auto --dist loadfile -m "not slow"

bench: setup data
	$(BIN)/python benchmarks/loader_overhead.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
