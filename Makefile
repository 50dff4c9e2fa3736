# Every target creates the virtual environment first, so `make run` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint sandbox bench screenshots clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/clinicsync

test: $(STAMP)
	QT_QPA_PLATFORM=$${QT_QPA_PLATFORM:-offscreen} $(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check clinicsync tests benchmarks
	$(BIN)/ruff format --check clinicsync tests benchmarks

sandbox: $(STAMP)
	$(BIN)/clinicsync sandbox

bench: $(STAMP)
	$(BIN)/python benchmarks/initial_sync.py

clean:
	rm -rf $(VENV) .pytest_cache build dist *.egg-info
