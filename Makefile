# One-command entry points. Everything installs into .venv; embedded PostgreSQL
# and Redis live under var/ unless DATABASE_URL / REDIS_URL are set.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8000
SCALE ?= small

.PHONY: install run test services stop lint audit messages bench

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	touch $@

services: install
	$(PY) scripts/devservices.py start

stop: install
	$(PY) scripts/devservices.py stop

run: install
	PORT=$(PORT) $(PY) scripts/run.py

test: services
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# Performance figures of issue 7 (docs/performance.md): SCALE=small (CI smoke) or full.
bench: services
	SCALE=$(SCALE) $(PY) scripts/bench.py

lint: install
	$(VENV)/bin/ruff check .
	DEBUG=1 $(PY) manage.py makemigrations --check --dry-run

# Known vulnerabilities of the pinned requirements (pip-audit); see scripts/audit.py.
audit: install
	$(PY) scripts/audit.py

messages: install
	DEBUG=1 $(PY) manage.py makemessages -l zh_Hans --no-obsolete --ignore=.venv --ignore=var --ignore=staticfiles
	DEBUG=1 $(PY) manage.py compilemessages --ignore=.venv
