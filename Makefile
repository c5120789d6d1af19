# The commands people type. `make demo` and `make test` each do all their own
# set-up (virtualenv, local stack, migrations): on a fresh machine they are the
# only two commands anyone needs.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
# make stack-up BROKERS=3 (a three-broker cluster), SECURE=1 (SASL/SCRAM over TLS, ACLs, PostgreSQL
# over TLS); the same for stack-down and stack-status. compose/local/README.md, "Modes".
BROKERS ?=
SECURE ?=
STACK  := $(if $(BROKERS),STACK_BROKERS=$(BROKERS)) $(if $(SECURE),STACK_SECURE=$(SECURE)) $(PYTHON) compose/local/stack.py
PYTEST_ARGS ?=
NPM    ?= npm
TS_HARNESS := tests/timescale/node_modules/.package-lock.json

.PHONY: install stack-up stack-down stack-status migrate demo test test-unit test-cluster lint bench clean timescale-harness browser

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

stack-up:
	@$(STACK) up

stack-down:
	@$(STACK) down

stack-status:
	@$(STACK) status

migrate: install stack-up
	$(VENV)/bin/tracker migrate

demo: install stack-up
	@bash compose/local/demo.sh

# tests/cluster (a secure three-broker stack of their own, mostly waiting on JVMs that stop and
# start) runs alongside the rest, in a second pytest whose output is shown after the first's: make
# test takes 11 minutes instead of 15 on 2 cores. Each run may select nothing (pytest's exit 5)
# under a PYTEST_ARGS filter, not both. `make test-cluster` runs the cluster tests alone.
test: install stack-up timescale-harness browser
	@mkdir -p .stack
	@$(PY) -m pytest tests/cluster -p no:cacheprovider $(PYTEST_ARGS) > .stack/test-cluster.out 2>&1 & cl=$$!; \
	$(PY) -m pytest --ignore=tests/cluster $(PYTEST_ARGS); rest=$$?; \
	wait $$cl; clrc=$$?; \
	echo; echo "==== tests/cluster, run alongside the above (exit $$clrc) ===="; cat .stack/test-cluster.out; \
	case "$$rest $$clrc" in "5 5") exit 5;; [05]" "[05]) exit 0;; *) exit 1;; esac

# TimescaleDB test harness (tests/timescale: PGlite + TimescaleDB from npm).
# Without Node.js the timescale tests skip themselves, saying why.
timescale-harness: $(TS_HARNESS)

$(TS_HARNESS): tests/timescale/package.json tests/timescale/package-lock.json
	@if command -v $(NPM) >/dev/null 2>&1; then \
		$(NPM) ci --prefix tests/timescale --no-audit --no-fund; \
	else echo "npm not found: tests/timescale will be skipped (needs Node.js)"; fi

# The web UI's browser tests (tests/integration/test_ui.py) drive Debian's
# headless Chromium and its driver, installed here where they are missing (as
# root, e.g. in CI). If they cannot be installed the browser tests fail, saying
# so: they never skip.
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium and chromium-driver (browser tests)"; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null \
		|| echo "could not install chromium and chromium-driver: the browser tests will fail"; \
	else echo "chromium and chromium-driver missing (apt-get install chromium chromium-driver as root): the browser tests will fail"; fi

test-unit: install
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

# Only the cluster tests (make test runs them too): they start and stop their own secure
# three-broker stack, so they need no stack-up.
test-cluster: install
	$(PY) -m pytest tests/cluster $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check tracker projections tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

bench: install stack-up
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	$(PY) -m bench $(BENCH_ARGS)

clean:
	-@$(STACK) down
	-@for mode in STACK_BROKERS=3 STACK_SECURE=1 "STACK_BROKERS=3 STACK_SECURE=1"; do \
		env $$mode $(PYTHON) compose/local/stack.py down; done
	rm -rf .stack $(VENV) tests/timescale/node_modules .pytest_cache .mypy_cache .ruff_cache *.egg-info bench/results/latest.json
