# Two commands set everything up on a fresh machine:
#   make demo   - create .venv if needed, install, run the main job on the bundled model and data
#   make test   - create .venv if needed, install, run ruff, mypy and pytest
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.dyncli-installed
THREADS ?= 1

.PHONY: demo test install lint typecheck pytest recipe docs clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): $(BIN)/python requirements-lock.txt pyproject.toml plugins/dyncli-hf/pyproject.toml \
		plugins/dyncli-blank-reg/pyproject.toml
	$(BIN)/python -m pip install -q -r requirements-lock.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	$(BIN)/python -m pip install -q --no-deps -e plugins/dyncli-hf
	$(BIN)/python -m pip install -q --no-deps -e plugins/dyncli-blank-reg
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/dyncli profile --policy all --models dyncli/assets/demo_static.ckpt --threads $(THREADS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check dyncli tests plugins/dyncli-blank-reg

typecheck: $(STAMP)
	$(BIN)/mypy dyncli plugins/dyncli-blank-reg/dyncli_blank_reg

pytest: $(STAMP)
	$(BIN)/python -m pytest -q

test: lint typecheck pytest

# The CLI reference, generated from the commands' option tables (a test checks it is current).
docs: $(STAMP)
	$(BIN)/python -m dyncli.cli.reference > docs/cli.md

# The full recipe: build the digits corpus from ../shared/data/fsdd, train, evaluate, convert, distill, profile (~90 min on CPU).
recipe: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH bash examples/digits/run.sh

clean-venv:
	rm -rf $(VENV)
