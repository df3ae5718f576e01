# make run  - serve the demo site on http://127.0.0.1:8080/
# make test - lint, type-check and run the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
CHECKED := app routes auth
RUN_ARGS ?=

.PHONY: run test lint format pytest bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python -m app $(RUN_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check $(CHECKED) tests bench
	$(BIN)/ruff format --check $(CHECKED) tests bench
	$(BIN)/mypy $(CHECKED)

format: $(STAMP)
	$(BIN)/ruff format $(CHECKED) tests bench
	$(BIN)/ruff check --fix $(CHECKED) tests bench

pytest: $(STAMP)
	$(BIN)/python -m pytest -q

test: lint pytest

bench: $(STAMP)
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
