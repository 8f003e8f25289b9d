# The two commands a newcomer needs: `make run` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test lint typecheck unit bench clean tools

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "smtp-gateway needs Python 3.11 or newer, found " + sys.version.split()[0])'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/python -m gateway.devsetup
	$(BIN)/smtp-gateway serve

test: tools lint typecheck unit

# Tools the tests drive besides Python: curl (an SMTP client), haproxy and systemd-analyze
# (checks of deploy/). Installed from Debian when missing and we are root (CI is); otherwise
# the tests that need them fail and say which package to install.
DEBIAN_TOOLS := curl:curl haproxy:haproxy systemd-analyze:systemd
tools:
	@missing=""; for pair in $(DEBIAN_TOOLS); do \
	  command -v $${pair%%:*} >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing from Debian:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "missing tools (Debian packages):$$missing; the tests that need them will fail" >&2; fi; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check gateway tests bench
	$(BIN)/ruff format --check gateway tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest

# The standard benchmark set, a few minutes; the report goes to bench/results/ (compare.md,
# .json and .png, and each script's output as .txt). bench/README.md says what each measures.
bench: SHELL := /bin/bash
bench: .SHELLFLAGS := -o pipefail -c
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	@mkdir -p bench/results
	$(BIN)/python bench/bench_core.py | tee bench/results/core.txt
	$(BIN)/python bench/bench_upstream.py | tee bench/results/upstream.txt
	$(BIN)/python bench/bench_message.py | tee bench/results/message.txt
	$(BIN)/python bench/compare.py | tee bench/results/compare.txt
	$(BIN)/python bench/bench_idle.py | tee bench/results/idle.txt

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis
