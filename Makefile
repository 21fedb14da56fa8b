# The README's two commands: `make demo` and `make test`. Both create .venv when missing and
# install everything pinned (constraints.txt) before running.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.cordwatch-installed

export MLFLOW_DISABLE_TELEMETRY := true

.PHONY: demo test lint install constraints clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, alone and pinned: the CPU build from the local wheel, not GBs of CUDA wheels.
	$(BIN)/python -m pip install --quiet -c constraints.txt torch
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[inference,server,scale,dev]'
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/cordwatch demo

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check registry drift tests benchmarks models
	$(BIN)/ruff format --check registry drift tests benchmarks models
	$(BIN)/mypy

# Re-pin every package from the current environment (torch without its local "+cpu" tag so
# that a CUDA runner installs its own build of the same release).
constraints:
	$(BIN)/python -m pip freeze --exclude-editable | sed -e 's/^torch==\([0-9.]*\)+cpu/torch==\1/' > constraints.txt

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
