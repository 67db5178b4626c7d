# Developer entry points. Everything runs from the project's own venv (.venv), which is
# created on first use and re-synced whenever requirements.txt changes.
#
#   make run      the whole app: Temporal dev server, Redis, web, worker, celery (Ctrl-C stops)
#   make infra    only the Temporal dev server and an embedded Redis
#   make test     pytest (extra arguments: make test PYTEST_ARGS="-k saga -x")
#   make bench    the saga latency benchmark (extra arguments: BENCH_ARGS=...)
#   make migrate  apply Django migrations
#   make worker   a Temporal worker alone (needs a Temporal server, e.g. from `make infra`)

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

PYTEST_ARGS ?=
BENCH_ARGS  ?=

.PHONY: install run infra test bench migrate worker

# The venv itself; order-only below, so a newer python binary does not force a reinstall.
$(PY):
	$(PYTHON) -m venv $(VENV)

# Reinstall only when requirements.txt is newer than the stamp of the last install.
$(STAMP): requirements.txt | $(PY)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	touch $@

install: $(STAMP)

run: $(STAMP)
	$(PY) scripts/run_dev.py

infra: $(STAMP)
	$(PY) scripts/run_dev.py --infra-only

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) bench/saga_latency.py $(BENCH_ARGS)

migrate: $(STAMP)
	$(PY) manage.py migrate --noinput

worker: $(STAMP)
	$(PY) manage.py run_worker
