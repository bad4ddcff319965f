# Modelyard developer tasks. `make test` is what CI runs (through .ci/run).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV   := .venv
STAMP  := $(VENV)/.installed
PY     := $(VENV)/bin/python
PYTEST_ARGS ?=
BENCH_ARGS ?=

export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help venv test pg-bin wrk-bin bench bench-quick lint demo clean

help:
	@echo "make test    install (.venv) and run every test tier (unit, integration, e2e)"
	@echo "make lint    ruff check + mypy"
	@echo "make bench   run the benchmarks: bench/run.py (data plane; BENCH_ARGS='--help') and"
	@echo "             bench/transform.py (batch transform over 1 GB of CSV; TRANSFORM_ARGS='--help')"
	@echo "make bench-quick  a quick smoke run of the benchmark (under a minute; not for numbers)"
	@echo "make wrk-bin install wrk, the benchmark's load generator (apt-get, when root)"
	@echo "make demo    run scripts/demo.py"
	@echo "make clean   remove .venv, .modelyard and build artifacts"

venv: $(STAMP)

# Re-installs only when pyproject.toml is newer than the stamp (or the venv is missing).
$(STAMP): pyproject.toml
	@py=""; \
	for cand in python3.11 python3; do \
	  if command -v "$$cand" >/dev/null 2>&1 \
	     && "$$cand" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; then \
	    py="$$cand"; break; \
	  fi; \
	done; \
	if [ -z "$$py" ]; then echo "error: Python 3.11+ not found (tried python3.11, python3)" >&2; exit 1; fi; \
	if ! $(PY) -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; then \
	  echo "creating $(VENV) with $$("$$py" --version)"; \
	  rm -rf $(VENV); \
	  "$$py" -m venv $(VENV); \
	fi
	@echo "installing modelyard[dev] into $(VENV)"
	@$(PY) -m pip install -q --progress-bar off --upgrade pip
	@$(PY) -m pip install -q --progress-bar off -e '.[dev]'
	@touch $(STAMP)

# PostgreSQL server binaries for the `postgres` tests. A failed install is not fatal:
# those tests then skip and say why.
pg-bin:
	@if command -v initdb >/dev/null 2>&1 || compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then \
	  :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing PostgreSQL (apt-get install postgresql)"; \
	  if ! { DEBIAN_FRONTEND=noninteractive apt-get update -qq \
	         && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql; \
	       } </dev/null >/tmp/modelyard-apt.log 2>&1; then \
	    echo "warning: installing PostgreSQL failed (see /tmp/modelyard-apt.log); postgres tests will skip" >&2; \
	    tail -n 5 /tmp/modelyard-apt.log >&2 || true; \
	  fi; \
	else \
	  echo "warning: PostgreSQL (initdb) not found and not root; postgres tests will skip" >&2; \
	fi

# wrk, the load generator the benchmark prefers (bench/). A failed install is not fatal: the
# benchmark then runs its Python load generator and says so, and the wrk test skips.
wrk-bin:
	@if command -v wrk >/dev/null 2>&1; then \
	  :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing wrk (apt-get install wrk)"; \
	  if ! { DEBIAN_FRONTEND=noninteractive apt-get update -qq \
	         && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk; \
	       } </dev/null >/tmp/modelyard-apt-wrk.log 2>&1; then \
	    echo "warning: installing wrk failed (see /tmp/modelyard-apt-wrk.log); the benchmark will use its Python load generator" >&2; \
	    tail -n 5 /tmp/modelyard-apt-wrk.log >&2 || true; \
	  fi; \
	else \
	  echo "warning: wrk not found and not root; the benchmark will use its Python load generator" >&2; \
	fi

test: venv pg-bin wrk-bin
	@rc=0; $(VENV)/bin/pytest -q tests $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests" >&2; fi; \
	exit $$rc

lint: venv
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/mypy

bench: venv wrk-bin
	$(PY) bench/run.py $(BENCH_ARGS)
	$(PY) bench/transform.py $(TRANSFORM_ARGS)

bench-quick: venv wrk-bin
	$(PY) bench/run.py --quick $(BENCH_ARGS)
	$(PY) bench/transform.py --size-mb 32 --raw-duration 1 --out bench/results/tmp $(TRANSFORM_ARGS)

demo: venv
	$(PY) scripts/demo.py

clean:
	rm -rf $(VENV) .modelyard build dist demo-work .pytest_cache .mypy_cache .ruff_cache
	rm -rf src/*.egg-info
	find . -name __pycache__ -type d -prune -not -path './.git/*' -exec rm -rf {} +
