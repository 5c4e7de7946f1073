# Two commands on a fresh Debian/Ubuntu machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEV_STAMP := $(VENV)/.installed-dev-stamp
PIP    := $(BIN)/pip install --quiet --disable-pip-version-check

.PHONY: install install-dev run migrate test test-reliability test-load test-fast lint format system-deps bench-deps clean schema bench

# The service's own dependencies (requirements.lock), every file checked against the lock's hashes; then the
# project itself. `make run` needs no more. Both locks: `uv pip compile pyproject.toml [--extra dev]
# --generate-hashes -o <lock>` (docs/security.md).
$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PIP) --require-hashes -r requirements.lock
	$(PIP) --no-deps -e .
	touch $(STAMP)

# The tools of tests, lint and benchmarks on top (requirements-dev.lock, hashed too).
$(DEV_STAMP): $(STAMP) requirements-dev.lock
	$(PIP) --require-hashes -r requirements-dev.lock
	touch $(DEV_STAMP)

install: $(STAMP)

install-dev: $(DEV_STAMP)

# A development .env the first time: a random JWT secret that survives restarts.
# Readable by its owner only (umask 077): it holds the secret that signs every token.
.env:
	@umask 077; printf 'APP_ENV=development\nJWT_SECRET=%s\nMIGRATE_ON_START=true\n' \
		"$$($(PYTHON) -c 'import secrets; print(secrets.token_urlsafe(48))')" > .env
	@echo "wrote .env with a random development JWT_SECRET"

run: install .env
	@chmod 600 .env  # also a .env from before it was written for its owner only
	$(BIN)/jobs-gateway run

migrate: install
	$(BIN)/jobs-gateway migrate

# redis-server, PostgreSQL's server binaries and Debian's chromium must be on the machine: the tests start them
# (the browser tests launch /usr/bin/chromium; Playwright downloads nothing).
system-deps:
	@missing=""; \
	command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || missing="$$missing redis-server"; \
	command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
		else echo "missing:$$missing -- install with: sudo apt-get install$$missing"; exit 1; fi; \
	fi

# ruff, ruff's formatter, mypy, and the import contracts of pyproject.toml (the layout's arrows).
lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

format: install-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Lint, and the whole suite on SQLite and again on a throwaway PostgreSQL cluster (initdb/pg_ctl); the browser
# tests drive the page through the GraphQL API, whose own tests run on both, so they run once. The two passes
# run side by side, then the tests marked `serial` (latency bounds) run alone: tests/support/run_suite.sh.
test: install-dev system-deps
	tests/support/run_suite.sh $(BIN) "$(MAKE)"

# Faults, load and hostile input against real processes, on SQLite then PostgreSQL (docs/reliability.md).
# The load scenarios (8-10) run last in each pass, once the fault scenarios' processes are gone.
test-reliability: install-dev system-deps
	$(BIN)/pytest tests/reliability -s -m "not load"
	$(BIN)/pytest tests/reliability -s -m "not load" --backend postgres
	$(BIN)/pytest tests/reliability -s -m load
	$(BIN)/pytest tests/reliability -s -m load --backend postgres

# Only scenarios 8-10 (200 jobs every second watched by 1,000 subscribers), on both backends.
test-load: install-dev system-deps
	$(BIN)/pytest tests/reliability/test_load.py -s
	$(BIN)/pytest tests/reliability/test_load.py -s --backend postgres

test-fast: install-dev
	$(BIN)/pytest -x -q

# B3 drives the REST API with Debian's wrk; only the benchmarks need it. After system-deps: one apt-get at a time.
bench-deps: system-deps
	@if ! command -v wrk >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; \
		else echo "missing: wrk -- install with: sudo apt-get install wrk"; exit 1; fi; \
	fi

# Every bench/b*.py in quick mode (BENCH_FULL=1: full sizes, BENCH_SMOKE=1: seconds, CI), then BENCHMARKS.md.
bench: install-dev bench-deps
	@set -e; for script in bench/b[0-9]*.py; do \
		name=$$(basename $$script .py); echo "=== bench $$name"; $(BIN)/python -m bench.$$name; \
	done
	$(BIN)/python -m bench.report

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# The checked-in SDL; tests/graphql/test_schema_file.py fails when it is out of date.
schema: install-dev
	$(BIN)/python -m app.schema_export > schema.graphql
