# sweeper: `make help` lists the targets. Every target runs inside .venv, created on first use.
.DEFAULT_GOAL := help
VENV ?= .venv
PY := $(VENV)/bin/python
# CIFAR-10's folder: `make smoke DATA=...`, else $CIFAR10_ROOT, else the team's shared copy
DATA ?= $(or $(CIFAR10_ROOT),../shared/datasets/cifar10)

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'

$(VENV)/installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[dev]"
	touch $@

install: $(VENV)/installed ## create .venv and install the project with its test tools

test: $(VENV)/installed ## run the test suite (synthetic data, CPU, 3-8 minutes on 2 cores)
	$(PY) -m pytest -n 2

test-system: $(VENV)/installed ## system tests: kills and resume, workers, PostgreSQL, MLflow server
	$(PY) -m pytest -n 2 -m "slow or postgres"

lint: $(VENV)/installed ## check style with ruff
	$(VENV)/bin/ruff check sweeper tests hydra_plugins

smoke: $(VENV)/installed ## train the smoke preset on real CIFAR-10 (13-29 s on 2 CPU cores)
	$(PY) -m sweeper.train experiment=smoke data.root=$(DATA)

train: $(VENV)/installed ## train the default model (pre-act ResNet-18) on real CIFAR-10
	$(PY) -m sweeper.train data.root=$(DATA)

sweep: $(VENV)/installed ## search blocks per stage and lr with Optuna (resumable: run it again)
	$(PY) -m sweeper.train --multirun sweep=blocks_lr data.root=$(DATA)

bench: $(VENV)/installed ## our trainer vs the seed-style loop, side by side (5-20 min on 2 CPU cores)
	$(PY) -m sweeper.bench --data-root $(DATA) $(ARGS)

ui: $(VENV)/installed ## MLflow UI for ./mlflow.db on http://127.0.0.1:5000
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000

clean: ## remove run outputs and caches (keeps .venv, mlflow.db and optuna.db)
	rm -rf outputs multirun .pytest_cache .ruff_cache

.PHONY: help install test test-system lint smoke train sweep bench ui clean
