# hpcgate: the two set-up commands are `make demo` and `make test`.
# Everything installs into this folder (.venv, node_modules); system packages the
# tests need come from Debian through scripts/install-system-deps.sh (root).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
MLFLOW_VENV := $(VENV)/apps/mlflow
NODE_BIN := $(CURDIR)/node_modules/.bin
export PATH := $(CURDIR)/$(BIN):$(NODE_BIN):$(PATH)
ARGS ?=
PYTEST_ARGS ?=

.PHONY: demo test lint bench install install-test system-deps labext clean

## The JupyterLab extension (labextension/), built with @jupyterlab/builder into
## src/hpcgate/labextension (shipped in the wheel); rebuilt only when its sources change.
LABEXT_SRC := labextension/package.json labextension/tsconfig.json $(wildcard labextension/src/*.ts labextension/style/*.css)
LABEXT_OUT := src/hpcgate/labextension/package.json
LABEXT_SHARE := $(VENV)/share/jupyter/labextensions/hpcgate-lab

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# the product alone (what `make demo` runs); the test extras (pytest, playwright and the
# third-party apps and jupyter-server-proxy plugins the tests drive) only for `make test`
$(VENV)/.installed: pyproject.toml $(LABEXT_OUT) | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[test]'
	touch $@

labextension/node_modules/.installed: labextension/package.json labextension/package-lock.json
	cd labextension && npm ci --no-audit --no-fund --loglevel=error
	touch $@

$(LABEXT_OUT): $(LABEXT_SRC) labextension/node_modules/.installed | $(BIN)/python
	$(BIN)/pip install -q 'jupyterlab>=4'
	cd labextension && node_modules/.bin/tsc && node node_modules/@jupyterlab/builder/lib/build-labextension.js \
	  --core-path "$$(../$(BIN)/python -c 'import jupyterlab, os; print(os.path.join(os.path.dirname(jupyterlab.__file__), "staging"))')" .
	# an editable install copied the previous build: replace it
	if [ -d $(LABEXT_SHARE) ]; then rm -rf $(LABEXT_SHARE) && cp -r src/hpcgate/labextension $(LABEXT_SHARE); fi
	touch $@

labext: $(LABEXT_OUT)

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

install: labext $(VENV)/.installed node_modules/.installed

install-test: install $(VENV)/.installed-test $(MLFLOW_VENV)/.installed

## MLflow for the mlflow recipe's test, in an environment of its own (about 850 MB with
## pandas, scikit-learn, matplotlib: kept out of the lab's), as a site offers it as a module;
## the tests put its bin/ on the lab's PATH (tests/lab/apps/apptools.py).
$(MLFLOW_VENV)/.installed: | $(BIN)/python
	$(PYTHON) -m venv $(MLFLOW_VENV)
	$(MLFLOW_VENV)/bin/pip install -q 'mlflow>=3.5'
	touch $@

system-deps:
	./scripts/install-system-deps.sh

## make demo: install into the project and run the hub on the embedded default.
demo: install
	$(BIN)/hpcgate up $(ARGS)

## make test: install what the tests need, lint and type-check, start what they need, run them.
## The 30 slowest set-ups, tests and teardowns are listed before the summary (where CI's time
## goes); a later --durations in PYTEST_ARGS overrides it.
test: install-test system-deps lint
	$(BIN)/python -m pytest --durations=30 --durations-min=1 $(PYTEST_ARGS)

## make lint: ruff (rules in pyproject.toml) and mypy where it pays (the hub side).
lint: install-test
	$(BIN)/ruff check src tests harness benchmarks
	$(BIN)/mypy

## make bench: side-by-side benchmarks, printed as tables with ratios.
# jupyter-server-proxy (the alternative) is installed but kept disabled by hpcgate's
# config; the benchmark enables it only in the Jupyter server it compares against.
bench: install-test system-deps
	$(BIN)/pip install -q -e '.[test,bench]'
	$(BIN)/python -m benchmarks $(ARGS)

clean:
	rm -rf $(VENV) node_modules artifacts .pytest_cache
