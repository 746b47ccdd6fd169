# One entry point for people and CI: `make test` sets up .venv (once) and runs the suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: test lint format demo bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,datasette,postgresql]'
	touch $@

test: $(VENV)/.installed
	$(PY) -m pytest -n 2 --dist worksteal

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check mirror migrations tests bench
	$(VENV)/bin/ruff format --check mirror migrations tests bench
	$(VENV)/bin/mypy mirror

format: $(VENV)/.installed
	$(VENV)/bin/ruff format mirror migrations tests bench
	$(VENV)/bin/ruff check --fix mirror migrations tests bench

demo: $(VENV)/.installed
	$(VENV)/bin/mirror demo

bench: $(VENV)/.installed
	for b in bench/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
