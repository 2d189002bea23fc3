# parecer — the two commands: `make demo` (the whole job) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test migrate bench lint clean schema

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/parecer demo

test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

migrate: $(STAMP)
	$(BIN)/parecer db migrate

bench: $(STAMP)
	$(BIN)/pip install -q -e '.[test,bench]'
	$(BIN)/python bench/run_all.py

# style and types: part of `make test` (and so of CI)
lint: $(STAMP)
	$(BIN)/ruff check runner tests bench
	$(BIN)/ruff format --check runner tests bench
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build dist *.egg-info

# tests/snapshots/schema.sql: the catalogue of a fresh install (tests/test_schema.py checks it is current).
schema: $(STAMP)
	$(BIN)/python -m parecer.schema > tests/snapshots/schema.sql.tmp && mv tests/snapshots/schema.sql.tmp tests/snapshots/schema.sql
