# Two commands for a fresh machine: `make demo` and `make test`.
# Both create (or reuse) a local virtual environment in $(VENV) and install this package with its test extras.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.nnunet_kd_installed

.PHONY: demo test lint bench clean-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/nnunet-kd demo

test: $(STAMP)
	$(BIN)/python -m ruff check nnunet_kd tests benchmarks
	$(BIN)/python -m pytest -q --durations=25 $(PYTEST_ARGS) tests

lint: $(STAMP)
	$(BIN)/python -m ruff check nnunet_kd tests benchmarks
	$(BIN)/python -m mypy

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run_all

clean-venv:
	rm -rf $(VENV)
