# make run  - serve the demo site on http://127.0.0.1:8080/
# make test - lint, type-check and run the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
CHECKED := app routes auth
# The demo as the README describes it: users and homes for /private/, and
# /proxy/ pointed at this server's own /static/ (at its first --listen port).
DEMO_ARGS := --htpasswd app/demo/users.htpasswd --htdigest app/demo/users.htdigest \
	--homes app/demo/homes --proxy self
RUN_ARGS ?=
# The peers `make bench` compares the server with, in an environment of their
# own so that they never enter the project's dependencies.
BENCH_VENV := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed-stamp

.PHONY: run test test-tools lint format pytest bench soak session-memory clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/klein-server $(DEMO_ARGS) $(RUN_ARGS)

# Programs the tests run for real: Apache's htpasswd and htdigest, curl, a
# headless Chromium for the demo's browser test, and Redis for the shared
# session store (each test that needs it starts its own).
test-tools:
	@command -v htpasswd >/dev/null && command -v curl >/dev/null \
		&& command -v chromium >/dev/null && command -v redis-server >/dev/null \
		|| { apt-get update -qq \
		&& apt-get install -y -qq apache2-utils curl chromium redis-server >/dev/null; }

lint: $(STAMP)
	$(BIN)/ruff check $(CHECKED) tests bench
	$(BIN)/ruff format --check $(CHECKED) tests bench
	$(BIN)/mypy $(CHECKED) tests
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff format $(CHECKED) tests bench
	$(BIN)/ruff check --fix $(CHECKED) tests bench

pytest: $(STAMP) test-tools
	$(BIN)/python -m pytest -q

test: lint pytest

$(BENCH_STAMP): bench/requirements.txt
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install --quiet -r bench/requirements.txt
	touch $(BENCH_STAMP)

bench: $(STAMP) $(BENCH_STAMP)
	$(BIN)/python bench/run.py $(BENCH_ARGS)

soak: $(STAMP)
	$(BIN)/python bench/soak.py $(SOAK_ARGS)

session-memory: $(STAMP)
	$(BIN)/python bench/session_memory.py

clean:
	rm -rf $(VENV) $(BENCH_VENV) build *.egg-info
