# One command each: `make test` (everything CI runs), `make demo`, `make lint`.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install lock test lint demo clean

# constraints.txt pins every package to the versions the suite last passed with
$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# after a dependency change: resolve afresh in a scratch venv, then pin what came out
lock:
	rm -rf .lock-venv && python3 -m venv .lock-venv
	.lock-venv/bin/pip install --quiet --upgrade pip
	.lock-venv/bin/pip install --quiet -e '.[dev]'
	{ grep '^#' constraints.txt; .lock-venv/bin/pip freeze --exclude-editable \
	    | sed -E 's/^(torch==[^+]*)\+.*/\1/'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt && rm -rf .lock-venv

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
	rm -rf $(VENV) .lock-venv lethe-data .pytest_cache
