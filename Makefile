# Fresh machine: `make demo` sets up .venv and runs the demo; `make test` runs the tests.
VENV ?= .venv
PYTHON ?= python3
STAMP := $(VENV)/.installed

.PHONY: setup demo test bench lexicon tiny

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/cased demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

bench: $(STAMP)
	$(VENV)/bin/cased bench core

# Regenerate package data (needs Debian's wordnet-base for the lexicon).
lexicon: $(STAMP)
	$(VENV)/bin/python tools/build_lexicon.py

tiny: $(STAMP)
	$(VENV)/bin/cased tiny build --out build/tiny
