# Developer entry points. Everything runs from the project's own venv (.venv), which is
# created on first use and synced to the dev lock (requirements-dev.txt, with hashes)
# whenever a lock changes.
#
#   make run      the whole app: Temporal dev server, Redis, web, worker, celery (Ctrl-C stops);
#                 scripts/run_dev.py prepares var/, the database and the environment, then
#                 runs Procfile.dev with honcho. Ports: PORT=8001 TEMPORAL_ADDRESS=localhost:7243
#   make infra    only the Temporal dev server and an embedded Redis
#   make test     pytest (extra arguments: make test PYTEST_ARGS="-k saga -x")
#   make bench    the saga latency benchmark (extra arguments: BENCH_ARGS=...)
#   make faults   the large fault suite: 100 orders, workers killed at random (FAULT_ARGS="--orders 300")
#   make migrate  apply Django migrations
#   make worker   a Temporal worker alone (needs a Temporal server, e.g. from `make infra`)
#   make install  only create/sync .venv
#   make lock     recompile requirements*.txt from requirements*.in (after editing those;
#                 LOCK_ARGS=--upgrade bumps every pin, LOCK_ARGS="--upgrade-package X" one)

# These are developer entry points: manage.py and the bench scripts run as development
# (DEBUG, the sandbox) unless told otherwise; the settings' own default is production.
export DJANGO_ENV ?= development

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

PYTEST_ARGS ?=
BENCH_ARGS  ?=
FAULT_ARGS  ?=

.PHONY: install lock run infra test bench faults migrate worker

# The venv itself; order-only below, so a newer python binary does not force a reinstall.
$(PY):
	$(PYTHON) -m venv $(VENV)

# Sync only when a lock is newer than the stamp of the last sync. pip installs exactly
# the locked versions (every one must match a hash); pip-sync (from the lock) then
# removes whatever the lock no longer lists, so .venv is the lock and nothing more.
$(STAMP): requirements-dev.txt requirements.txt | $(PY)
	$(PY) -m pip install --disable-pip-version-check -q --require-hashes -r requirements-dev.txt
	$(VENV)/bin/pip-sync -q requirements-dev.txt
	touch $@

install: $(STAMP)

# The locks are resolved against PyPI alone, whatever pip.conf says (extra indexes,
# find-links or constraints of this machine), so they install anywhere with only PyPI.
# They are for Python 3.11 on Linux, like the Docker image.
LOCK_ARGS      ?=
LOCK_INDEX_URL ?= https://pypi.org/simple
PIP_COMPILE = PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= PIP_EXTRA_INDEX_URL= PIP_CONSTRAINT= \
	PIP_INDEX_URL=$(LOCK_INDEX_URL) CUSTOM_COMPILE_COMMAND="make lock" \
	$(VENV)/bin/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras \
	--no-emit-index-url $(LOCK_ARGS)

lock: | $(PY)
	$(PY) -m piptools --version >/dev/null 2>&1 || $(PY) -m pip install -q pip-tools
	$(PIP_COMPILE) --output-file requirements.txt requirements.in
	$(PIP_COMPILE) --output-file requirements-dev.txt requirements-dev.in

run: $(STAMP)
	$(PY) scripts/run_dev.py

infra: $(STAMP)
	$(PY) scripts/run_dev.py --infra-only

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) bench/saga_latency.py $(BENCH_ARGS)

faults: $(STAMP)
	$(PY) scripts/fault_suite.py $(FAULT_ARGS)

migrate: $(STAMP)
	$(PY) manage.py migrate --noinput

worker: $(STAMP)
	$(PY) manage.py run_worker
