# The two commands of the README: `make demo` (the main job) and `make test` (the suite).
VENV ?= .venv
STATE_DIR ?= .dbscale

.PHONY: demo test lint bootstrap down bench

bootstrap:
	@bash scripts/bootstrap.sh

demo: bootstrap
	$(VENV)/bin/dbscale demo --workload --state-dir $(STATE_DIR)

down: bootstrap
	$(VENV)/bin/dbscale down --state-dir $(STATE_DIR)

test: bootstrap
	$(VENV)/bin/pytest -q

lint: bootstrap
	$(VENV)/bin/ruff check src tests benchmarks scripts examples
	$(VENV)/bin/ruff format --check src tests benchmarks scripts examples
	$(VENV)/bin/mypy
	$(VENV)/bin/python scripts/unasync.py --check

bench: bootstrap
	@for script in benchmarks/*.py; do echo "== $$script"; $(VENV)/bin/python $$script || exit 1; done
