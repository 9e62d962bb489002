# The two commands of the README: `make demo` and `make test`. Both set everything up first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export LEGOLAS_HOME ?= $(CURDIR)/var
export DAGSTER_HOME ?= $(LEGOLAS_HOME)/dagster
export HF_HUB_OFFLINE := 1

.PHONY: setup demo test ui artifacts

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned: the only spec that takes the local CPU wheel instead of CUDA builds.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,ray,tracking,storage]'
	touch $@

setup: $(VENV)/.installed
	mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $(DAGSTER_HOME)/dagster.yaml

# The main job: two demo tenants in the embedded store, then every asset of each as one run of its
# <tenant>__training_job (demo: the preset's K=3, folds 0...2; insurance: its own setting, K=3, folds 0...2).
# `legolas train` runs `dagster job execute` with that partition range (`--dry-run` prints the command).
demo: setup
	LEGOLAS_PRESET=demo $(BIN)/legolas demo-data --conversations 600 --reviews 120
	LEGOLAS_PRESET=demo $(BIN)/legolas demo-data --tenant insurance --domain insurance --conversations 300 --reviews 60
	LEGOLAS_PRESET=demo $(BIN)/legolas tenants add insurance --n-folds 3
	LEGOLAS_PRESET=demo $(BIN)/legolas train --tenant demo
	LEGOLAS_PRESET=demo $(BIN)/legolas train --tenant insurance
	LEGOLAS_PRESET=demo $(BIN)/legolas status

# 2 workers, one module per worker at a time (module fixtures train once); conftest.py gives each one torch thread.
test: setup
	$(BIN)/python -m pytest -q -n 2 --dist loadscope --no-loadscope-reorder

# LEGOLAS_DAGSTER_URL: the reload_on_tenant_change sensor asks this webserver to reload the code location
# when tenants are added, changed or removed (dagster dev shares one code server that nothing else reloads).
ui: setup
	LEGOLAS_PRESET=demo LEGOLAS_ARTIFACTS_URL=http://127.0.0.1:3001 LEGOLAS_DAGSTER_URL=http://127.0.0.1:3000 $(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

# The reports, manifests and plots the UI links to, served read-only on loopback (run beside `make ui`).
artifacts:
	$(BIN)/python -m legolas_ml.lifecycle.artifact_server --port 3001 --directory $(LEGOLAS_HOME)/output
