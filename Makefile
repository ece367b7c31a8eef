# Fresh machine: `make demo` runs the pipeline, `make test` runs everything CI runs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install up down demo lint typecheck test test-unit test-integration bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

up: install
	$(BIN)/tidings dev up
	$(BIN)/tidings topics apply
	$(BIN)/tidings db migrate

down: install
	$(BIN)/tidings dev down

demo: install
	$(BIN)/tidings demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

test-unit: install
	$(BIN)/pytest tests/unit -q

test-integration: up
	$(BIN)/pytest tests/integration -q

test: lint typecheck up
	$(BIN)/pytest tests -q

clean:
	-if [ -x $(VENV)/bin/tidings ]; then $(VENV)/bin/tidings dev down; fi
	rm -rf $(VENV) .devstack .pytest_cache .mypy_cache .ruff_cache .hypothesis
