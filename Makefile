# waconnect: `make run` (development server) and `make test` (everything CI runs).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
ADDR   ?= 127.0.0.1:8000
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test lint unit bench chromium services venv

$(BIN)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

venv: $(BIN)/.installed

## run: set up (venv, database, an admin user) and start the app with the supervisor inside
run: venv
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py ensure_admin
	$(BIN)/python manage.py runserver $(ADDR)

## chromium: Debian's Chromium for the browser tests (Playwright never downloads one)
chromium:
	@command -v chromium >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; }

## services: start PostgreSQL and Redis if they are not running
services:
	@bash .ci/services.sh

lint: venv
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

PG_URL ?= postgres://postgres@127.0.0.1:5432/waconnect
REDIS_TEST_URL ?= redis://127.0.0.1:6379/15

## test: lint, every tier on SQLite + in-memory layer (unit, integration, e2e), then
## tests/postgres (with the chaos test) and the lease, supervisor, consumer, view and
## API tests again on PostgreSQL + Redis
test: venv chromium services lint
	$(BIN)/python -m pytest
	DATABASE_URL=$(PG_URL) REDIS_URL=$(REDIS_TEST_URL) TEST_DATABASE_NAME=test_waconnect_$$$$ \
	  $(BIN)/python -m pytest -m "not benchmark" \
	  tests/postgres tests/unit/test_leases.py tests/unit/test_models.py tests/unit/test_compiled_sql.py \
	  tests/unit/test_supervisor.py \
	  tests/unit/test_consumers.py tests/unit/test_create_socket.py tests/unit/test_views.py tests/unit/test_names.py \
	  tests/unit/test_ops_web.py tests/unit/test_ops_metrics_move.py tests/unit/test_ops_message_metrics.py \
	  tests/unit/test_lifecycle.py tests/unit/test_runner_matrix.py tests/unit/test_intents.py \
	  tests/unit/test_supervisor_partition.py tests/unit/test_supervisor_rung_claim.py \
	  tests/unit/test_middleware_on_loop.py tests/unit/test_doorbell_stop.py \
	  tests/unit/test_connect_path.py tests/unit/test_unconfirmed_stops.py \
	  tests/api/test_long_poll.py tests/api/test_sessions_api.py tests/api/test_auth.py \
	  tests/api/test_concurrency.py tests/api/test_tokens_ui.py tests/unit/test_permissions.py \
	  tests/unit/test_messaging_outbound.py tests/unit/test_messaging_pump.py tests/unit/test_messaging_lost_track.py tests/unit/test_messaging_intents.py \
	  tests/unit/test_messaging_runner.py tests/unit/test_messaging_batch.py \
	  tests/unit/test_webhooks_outbox.py tests/unit/test_webhooks_delivery.py \
	  tests/unit/test_webhooks_dispatch.py tests/unit/test_webhooks_messages.py \
	  tests/unit/test_webhooks_flow.py tests/unit/test_webhooks_ring.py \
	  tests/api/test_webhooks_api.py \
	  tests/unit/test_peer_message.py \
	  tests/unit/test_messaging_ack.py \
	  tests/api/test_messages_api.py tests/api/test_messages_wait.py tests/unit/test_messages_panel.py

unit: venv
	$(BIN)/python -m pytest tests/unit

## bench: the benchmarks (results go in docs/benchmarks.md); the cluster ones use
## PostgreSQL and Redis (their own database and Redis db) like the production shape
bench: venv chromium services
	$(BIN)/python benchmarks/bench_qr_latency.py --sessions 50
	$(BIN)/python benchmarks/bench_workers.py
	$(BIN)/python benchmarks/bench_cluster_qr.py
	$(BIN)/python benchmarks/bench_failover.py
	$(BIN)/python benchmarks/bench_fanout.py
	$(BIN)/python benchmarks/bench_scale.py
	$(BIN)/python benchmarks/bench_metrics_scrape.py
	$(BIN)/python benchmarks/bench_db_call.py
	$(BIN)/python benchmarks/bench_api_qr.py
	$(BIN)/python benchmarks/bench_messages.py
	$(BIN)/python benchmarks/bench_message_inbound.py
	$(BIN)/python benchmarks/bench_message_api_cluster.py
	$(BIN)/python benchmarks/bench_idle_pages.py
