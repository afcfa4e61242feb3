# Fresh machine: `make demo` (set up + open the TUI) and `make test` (set up + run the tests).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export TF_CPP_MIN_LOG_LEVEL ?= 3

.PHONY: demo test bench install clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/nntrace

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

bench: $(VENV)/.installed
	$(BIN)/python bench/bench_forward.py
	$(BIN)/python bench/bench_trace.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
