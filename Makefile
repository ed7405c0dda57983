# velro-cache: the two commands are `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check --quiet
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo test test-sqlite lint test-matrix bench services django-suite django-redis-suite clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install -e ".[test,postgres,prometheus,bench,lint]"
	touch $(STAMP)

services:
	scripts/ensure_services.sh
	@# The dashboard's browser tests drive Debian's chromium (Playwright never downloads a browser here).
	test -x /usr/bin/chromium || { test "$$(id -u)" = 0 && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

django-suite: $(STAMP)
	$(PY) scripts/fetch_django_tests.py

## make django-redis-suite: django-redis's own backend suite, from the sdist of the installed version (tests/test_django_redis_suite.py).
django-redis-suite: $(STAMP)
	$(PY) scripts/fetch_django_redis_tests.py

## make test: install what is missing, make sure PostgreSQL and Redis answer, run the whole suite, then the SQLite leg.
test: $(STAMP) services django-suite django-redis-suite lint
	$(PY) -m pytest $(PYTEST_ARGS)
	$(MAKE) test-sqlite

## make lint: ruff and mypy over velro_cache/ (settings in pyproject.toml); make test runs it first.
lint: $(STAMP)
	$(PY) -m ruff check velro_cache
	$(PY) -m mypy

## make test-sqlite: the materialized-view tests again on SQLite, against the emulation (tests/settings_sqlite.py).
test-sqlite: $(STAMP)
	$(PY) -m pytest tests/test_materialized_views.py --ds tests.settings_sqlite

## make test-matrix: the Django 6.0 leg on python3.12 and python3.13 (own venvs).
test-matrix: services
	$(MAKE) test VENV=.venv-py312-dj60 PYTHON=$$(scripts/find_python.sh 3.12)
	$(MAKE) test VENV=.venv-py313-dj60 PYTHON=$$(scripts/find_python.sh 3.13)

## make bench: every benchmark, results written to benchmarks/results/.
bench: $(STAMP) services
	$(PY) -m benchmarks

## make demo: migrate and seed the example project, drive the traffic model without and with warming, print both
## reports and the warm-up curve, then serve on 127.0.0.1:8000 with the caches warm.
# Whether Redis answers is decided once, here, and passed to every command (VELRO_EXAMPLE_L2).
# gunicorn with the example's config warms each worker as it starts (post_worker_init): L1 per worker,
# on top of the L2 the demo's warmed pass left.
demo: $(STAMP)
	cd example_project && export VELRO_EXAMPLE_L2=$$(../$(PY) -m example_project.redis_probe) && \
		../$(PY) manage.py migrate --noinput && \
		../$(PY) manage.py velro_seed && \
		../$(PY) manage.py velro_demo && \
		../$(PY) -m gunicorn -c gunicorn.conf.py

clean:
	rm -rf $(VENV) .venv-py3*-dj60 .cache .pytest_cache .hypothesis
