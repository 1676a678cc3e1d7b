# `make run` and `make test` each set up .venv from the pins on a fresh clone, then do their job.
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
# Stage commands in dvc.yaml call `python`: make it the venv's.
export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1

.PHONY: run test lint bench ui serve server clean
PORT ?= 5001
SERVER_PORT ?= 5000

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

run: $(STAMP)
	dvc repro
	python -m pipeline report

test: $(STAMP)
	ruff check pipeline tests benchmarks
	ruff format --check pipeline tests benchmarks
	python -m pytest

bench: $(STAMP)
	python benchmarks/tracking_overhead.py
	python benchmarks/repro_time.py
	python benchmarks/serving.py
	python benchmarks/scale.py --rows 1000000 --features 100 --json scale.json
	python benchmarks/pipeline_scale.py --rows 1000000 --features 100 --json pipeline_scale.json

# The store's runs in MLflow's UI, opened on the training runs (with MLFLOW_TRACKING_URI set: the server's address).
ui: $(STAMP)
	python -m pipeline ui --port 5000

# The champion from this store, served by `mlflow models serve` with this venv's uvicorn.
serve: $(STAMP)
	python -m pipeline serve --port $(PORT)

# A team's tracking server in the foreground: PostgreSQL behind `mlflow server` on 127.0.0.1:$(SERVER_PORT),
# proxied artifacts; all its state in .server/. Then: export MLFLOW_TRACKING_URI=http://127.0.0.1:$(SERVER_PORT)
# SERVER_WORKERS (default 1) sets its uvicorn workers.
server: $(STAMP)
	python -m pipeline server --folder .server --port $(SERVER_PORT)

# Leaves what git tracks (dvc.lock, metrics/, plots/, models/history.csv, models/tracking.json).
clean:
	rm -rf $(VENV) mlflow.db mlflow.db.* mlartifacts mlruns data/prepared reports .mlproject
	rm -rf models/model.pt models/mlflow_run.json models/registered.json models/recorded
