# Two entry points: `make demo` (set up + run the pipeline on the built-in
# simulated cohort) and `make test` (set up + run the whole test suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_OUT ?= demo_out
DATA ?=

.PHONY: setup demo test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

# torch first: the pinned CPU build lies on local disk here; a plain `torch`
# requirement would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e '.[test]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/python jobs/demo.py --out $(DEMO_OUT) $(if $(DATA),--data $(DATA),)

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
