# Two commands matter: `make demo` and `make test`. Both set themselves up.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint format typecheck bench synth clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[cli,cdk,dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/chatbatch local run examples/jobs.jsonl --out out/demo

test: $(STAMP) lint
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: $(STAMP)
	$(PY) -m bench

synth: $(STAMP)
	$(PY) app.py

clean:
	rm -rf $(VENV) cdk.out out .pytest_cache .mypy_cache .ruff_cache
