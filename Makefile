# The two commands a new user needs: `make run` and `make test`.
SHELL := /bin/bash
UV := $(shell command -v uv 2>/dev/null)
ifeq ($(UV),)
UV := python3 -m uv
endif
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test test-postgres-redis install browser-deps services screenshot

install:
	@scripts/ensure-uv
	$(UV) sync --frozen

## Install, migrate, and serve on http://127.0.0.1:8000 with the offline demo model.
run: install
	DJANGO_DEBUG=1 $(UV) run --frozen python manage.py migrate --no-input
	DJANGO_DEBUG=1 $(UV) run --frozen python manage.py runserver $(HOST):$(PORT)

## Lint, type-check, check migrations, and run every test, browser tests included.
test: install browser-deps services
	$(UV) run --frozen ruff check .
	$(UV) run --frozen ruff format --check .
	DJANGO_DEBUG=1 $(UV) run --frozen mypy .
	DJANGO_DEBUG=1 $(UV) run --frozen python manage.py makemigrations --check --dry-run
	$(UV) run --frozen pytest $(PYTEST_ARGS)

## The behaviour tests again, as several processes run: PostgreSQL and the Redis delivery.
## Each run has its own test database and Redis key prefix, and deletes only those.
test-postgres-redis: install services
	DATABASE_URL=$${TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/chat} \
	REDIS_URL=$${TEST_REDIS_URL:-redis://127.0.0.1:6379/1} \
		$(UV) run --frozen pytest tests --ignore=tests/browser --ignore=tests/multiprocess $(PYTEST_ARGS)

browser-deps:
	@scripts/ensure-chromium
	@scripts/ensure-node-tools

services:
	@scripts/ensure-services

## Refresh docs/screenshot.png (a browser test that runs only when asked to).
screenshot: install browser-deps
	UPDATE_SCREENSHOT=1 $(UV) run --frozen pytest tests/browser -k screenshot

## The relay benchmark (bench/run.py): the app against the fastest and the naive relay,
## on one pinned core. Quick mode takes under 3 minutes; `make bench-full` (or
## MODE=full) measures every configuration. Results: bench/results/results.md.
.PHONY: bench bench-full
MODE ?= quick
bench: install services
	$(UV) run --frozen python -m bench.run --mode $(MODE) $(BENCH_ARGS)

bench-full:
	$(MAKE) bench MODE=full
