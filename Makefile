# One command each: `make test` (everything CI runs), `make demo`, `make lint`.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install test lint demo clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy app workers
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy app workers

demo: install
	$(VENV)/bin/lethe demo

clean:
	rm -rf $(VENV) lethe-data .pytest_cache
