# Two commands matter: `make demo` and `make test`. Both set themselves up.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test e2e lint format typecheck bench synth clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[cdk,dev]'
	@touch $(STAMP)

# ~200 jobs, every priority, roles, streaming, a few invalid lines, against a simulator
# that allows 600 requests/min per model, answers in ~200 ms and injects 429s and 5xx.
demo: $(STAMP)
	$(VENV)/bin/chatbatch local run examples/jobs.jsonl --out out/demo \
		--rpm 600 --sim-rpm 600 --sim-latency-ms 200 --sim-faults '{"429": 0.03, "500": 0.03}'
	@echo "results: out/demo/results.jsonl  errors: out/demo/errors.jsonl  costs: out/demo/costs.jsonl"

# PYTHONDONTWRITEBYTECODE emptied: with it set (as on the CI machines) every worker and every
# subprocess a test starts compiles the project's modules and rewrites each test file anew.
test: $(STAMP) lint
	PYTHONDONTWRITEBYTECODE= $(PY) -m pytest -n 4 --dist loadfile

# Against a real AWS account and DeepSeek: deploys a stack of its own, runs 20 jobs, checks
# their costs, destroys it (~15 min, a few cents). Needs AWS credentials and a region,
# DEEPSEEK_API_KEY and Node 20; skipped (with what is missing) otherwise. `make test` skips it.
e2e: $(STAMP)
	CHATBATCH_E2E=1 $(PY) -m pytest tests/e2e -p no:xdist -rs

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
