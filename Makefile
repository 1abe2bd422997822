# hpcgate: the two set-up commands are `make demo` and `make test`.
# Everything installs into this folder (.venv, node_modules); system packages the
# tests need come from Debian through scripts/install-system-deps.sh (root).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
NODE_BIN := $(CURDIR)/node_modules/.bin
export PATH := $(CURDIR)/$(BIN):$(NODE_BIN):$(PATH)
ARGS ?=
PYTEST_ARGS ?=

.PHONY: demo test bench install install-test system-deps labext clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

install: $(VENV)/.installed node_modules/.installed

system-deps:
	./scripts/install-system-deps.sh

## make demo: install into the project and run the hub on the embedded default.
demo: install
	$(BIN)/hpcgate up $(ARGS)

## make test: install what the tests need, start what they need, run them.
test: install system-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## make bench: side-by-side benchmarks, printed as tables with ratios.
# The alternatives (jupyter-server-proxy) go into their own venv: installed, they
# enable themselves in every Jupyter server of the venv, the test servers included.
BENCH_VENV := .venv-bench
$(BENCH_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install -q --upgrade pip
	$(BENCH_VENV)/bin/pip install -q -e '.[test,bench]'
	touch $@

bench: install system-deps $(BENCH_VENV)/.installed
	PATH=$(CURDIR)/$(BENCH_VENV)/bin:$(NODE_BIN):$$PATH $(BENCH_VENV)/bin/python -m benchmarks $(ARGS)

clean:
	rm -rf $(VENV) $(BENCH_VENV) node_modules artifacts .pytest_cache
