# airflow-mlops — every target bootstraps what it needs (a .venv made with uv from requirements.txt).
SHELL := /bin/bash
PYTHON_VERSION ?= 3.11
VENV := .venv
PY := $(VENV)/bin/python
export MLOPS_HOME ?= $(CURDIR)/.mlops
# The use case `make demo` replays: a folder of examples/ (flight_delay: 2013 flights, monthly classification;
# seattle_weather: daily weather, regression). DEMO_ARGS adds options: make demo DEMO_ARGS="--fresh".
EXAMPLE ?= flight_delay
DEMO_ARGS ?=
# uv: on PATH, else importable by python3, else installed into a virtualenv of its own (.uv/), never into the
# system Python (a current Debian, Ubuntu or Homebrew Python refuses that: externally managed environment).
UV := $(shell command -v uv 2>/dev/null)
ifeq ($(UV),)
UV := $(shell python3 -m uv --version >/dev/null 2>&1 && echo "python3 -m uv")
endif
ifeq ($(UV),)
UV := .uv/bin/uv
endif

.PHONY: help install demo test test-fast test-e2e test-production up down status lint bench lock clean

help:
	@echo "make demo       run the main job end to end on the embedded profile (Airflow on 127.0.0.1:8080):"
	@echo "                replay examples/\$$EXAMPLE (default $(EXAMPLE); make demo EXAMPLE=seattle_weather)"
	@echo "make test       run the whole test suite (what CI runs)"
	@echo "make test-fast  only the fast layers (core + operators without a DB), seconds"
	@echo "make up | down | status   the embedded Airflow (API server + UI, scheduler, DAG processor, triggerer)"
	@echo "make bench      benchmarks (figures and ratios)"
	@echo "make lock       re-resolve requirements.txt (full) and requirements-runtime.txt (images) from the .in files"
	@echo "make clean      stop everything and delete MLOPS_HOME ($(MLOPS_HOME))"

.uv/bin/uv:
	python3 -m venv .uv
	.uv/bin/python -m pip install --quiet uv

# uv fetches Python $(PYTHON_VERSION) itself when the machine has another one.
$(VENV)/.installed: requirements.txt pyproject.toml devtools/pyproject.toml | $(filter .uv/bin/uv,$(UV))
	@test -x $(PY) || $(UV) venv --quiet --python $(PYTHON_VERSION) $(VENV)
	$(UV) pip install --quiet --python $(PY) -r requirements.txt
	$(UV) pip install --quiet --python $(PY) --no-deps -e .
	$(UV) pip install --quiet --python $(PY) --no-deps -e devtools
	@touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m airflow_mlops_dev.demo --usecase examples/$(EXAMPLE) $(DEMO_ARGS)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -m "not slow and not e2e and not production" $(PYTEST_ARGS)

test-e2e: install
	$(PY) -m pytest -m e2e $(PYTEST_ARGS)

test-production: install
	$(PY) -m pytest -m production $(PYTEST_ARGS)

up: install
	$(PY) -m airflow_mlops_dev.devstack up
	$(PY) -m airflow_mlops_dev.serving up

down:
	@if [ -x $(PY) ]; then $(PY) -m airflow_mlops_dev.serving down; $(PY) -m airflow_mlops_dev.devstack down; fi

status: install
	$(PY) -m airflow_mlops_dev.devstack status; $(PY) -m airflow_mlops_dev.serving status

lint: install
	$(VENV)/bin/ruff check dags plugins devtools include examples tests benchmarks
	$(VENV)/bin/ruff format --check dags plugins devtools include examples tests benchmarks

bench: install
	$(PY) benchmarks/run_all.py

lock: | $(filter .uv/bin/uv,$(UV))
	$(UV) pip compile --quiet --python-version $(PYTHON_VERSION) requirements-dev.in -o requirements.txt
	$(UV) pip compile --quiet --python-version $(PYTHON_VERSION) requirements.in -c requirements.txt -o requirements-runtime.txt

clean: down
	rm -rf "$(MLOPS_HOME)"
