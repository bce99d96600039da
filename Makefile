# Fresh machine: `make demo` sets up .venv and runs the demo; `make test` runs the tests.
VENV ?= .venv
PYTHON ?= python3
STAMP := $(VENV)/.installed
# autofaiss and clip-retrieval in a venv of their own: their numpy<2 pin clashes with the project's
# (tests/authors-requirements.txt says why; tests/cased_core/artifacts/test_authors_layout.py uses it).
AUTHORS := .venv-authors
AUTHORS_STAMP := $(AUTHORS)/.installed

.PHONY: setup demo test bench lexicon tiny

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

$(AUTHORS_STAMP): tests/authors-requirements.txt
	$(PYTHON) -m venv $(AUTHORS)
	$(AUTHORS)/bin/pip install -q -r tests/authors-requirements.txt
	$(AUTHORS)/bin/pip install -q --no-deps clip-retrieval==2.45.0
	touch $(AUTHORS_STAMP)

setup: $(STAMP) $(AUTHORS_STAMP)

demo: $(STAMP)
	$(VENV)/bin/cased demo

test: $(STAMP) $(AUTHORS_STAMP)
	$(VENV)/bin/python -m pytest -q

bench: $(STAMP)
	$(VENV)/bin/cased bench core

# Regenerate package data (needs Debian's wordnet-base for the lexicon).
lexicon: $(STAMP)
	$(VENV)/bin/python tools/build_lexicon.py

tiny: $(STAMP)
	$(VENV)/bin/cased tiny build --out build/tiny
