# Entry points for users and CI. `make run` runs the example; `make test` runs every check.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXAMPLE_ITEMS ?= 200000
PY_DIRS := orchestrator_ext tests scripts $(wildcard bench) snakemake_executor_plugin_orchestrator_local snakemake_executor_plugin_orchestrator_slurm snakemake_storage_plugin_orchestrator_s3

.PHONY: run test unit lint services bench clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# editable_mode=compat puts the repository on sys.path: Snakemake finds executor plugins
# (our orchestrator-local and orchestrator-slurm) with pkgutil.iter_modules, which does not
# see setuptools' default editable finder.
$(VENV)/.installed: pyproject.toml | $(BIN)/activate
	$(BIN)/pip install --quiet -e . --config-settings editable_mode=compat
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/activate
	$(BIN)/pip install --quiet -e ".[test]" --config-settings editable_mode=compat
	touch $@ $(VENV)/.installed

data/records.parquet: | $(VENV)/.installed
	$(BIN)/orchestrator example-data --items $(EXAMPLE_ITEMS) --out $@

## run: the example run on this machine (local profile, SQLite state)
run: $(VENV)/.installed data/records.parquet
	$(BIN)/snakemake --profile profiles/local
	@echo
	@echo "result:   results/demo/final/result.parquet"
	@echo "manifest: results/demo/manifest.json"
	@echo "status:   $(BIN)/orchestrator status"

## lint: ruff, mypy, snakefmt and snakemake --lint
lint: $(VENV)/.installed-test
	$(BIN)/ruff format --check $(PY_DIRS)
	$(BIN)/ruff check $(PY_DIRS)
	$(BIN)/mypy
	$(BIN)/snakefmt --check workflow rules
	$(BIN)/snakemake --lint --configfile config/config.yaml

## services: the local Slurm cluster and AWS endpoint the integration tests use
services: $(VENV)/.installed-test
	VENV=$(VENV) bash tests/services/setup.sh all

# Two pytest workers: the Slurm tests (one xdist group, tests/conftest.py) spend most of
# their time waiting on the cluster, and the rest of the suite runs beside them.
TEST_WORKERS ?= 2

## test: everything the tests need, then the whole suite
test: lint services
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadgroup

## unit: the fast tests, which need no service and run no workflow (markers: tests/conftest.py)
unit: $(VENV)/.installed-test
	$(BIN)/pytest -q -n $(TEST_WORKERS) -m "not service and not workflow"

$(VENV)/.installed-bench: pyproject.toml | $(BIN)/activate
	$(BIN)/pip install --quiet -e ".[test,bench]" --config-settings editable_mode=compat
	touch $@ $(VENV)/.installed-test $(VENV)/.installed

## bench: every benchmark (not tests; about two and a half hours on 2 cores), then docs/benchmarks.md and its plot
bench: $(VENV)/.installed-bench
	VENV=$(VENV) bash tests/services/setup.sh slurm
	VENV=$(VENV) bash tests/services/setup.sh moto
	$(BIN)/python bench/cpu.py
	$(BIN)/python bench/plan.py --batches 1000 10000 30000 --no-bare-script
	$(BIN)/python bench/reduce.py
	$(BIN)/python bench/reduce.py --rows 300000000 --batches 30 --fan-in 8 --repeats 1
	$(BIN)/python bench/merge_memory.py
	$(BIN)/python bench/partition_memory.py
	$(BIN)/python bench/requests.py
	$(BIN)/python bench/slurm.py
	$(BIN)/python bench/slurm_jobs.py
	$(BIN)/python bench/workers.py
	$(BIN)/python bench/batches.py --plain-batches 200 1000
	$(BIN)/python bench/plot.py

clean:
	rm -rf results .snakemake
