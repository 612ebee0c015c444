# `make test` sets up a fresh machine (pip, npm, apt) and runs every default test.
PYTHON ?= python3
NODE_DIR := interop/node

.PHONY: test deps test-only lint slow bench

test: deps test-only

deps:
	$(PYTHON) -m pip install --quiet -e '.[test]'
	@if [ -f $(NODE_DIR)/package.json ]; then cd $(NODE_DIR) && npm ci --no-audit --no-fund --silent; fi
	@if ! command -v amqp-publish >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq amqp-tools >/dev/null) \
		|| echo "amqp-tools not installed: its interop test will be skipped"; \
	fi
	@# rabbitmqadmin (interop/test_rabbitmqadmin.py) and the RabbitMQ node of the definitions round trip.
	@if ! command -v rabbitmqadmin >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null) \
		|| echo "rabbitmq-server not installed: the rabbitmqadmin and RabbitMQ round-trip tests will be skipped"; \
	fi

test-only: lint
	$(PYTHON) -m pytest -q -p no:cacheprovider

# ruff, and mypy over the package as installed and as checked out (leveret/ links amqp/, broker/, config/).
lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m mypy

# Soak, crash-loop and other long runs.
slow: deps
	$(PYTHON) -m pytest -q -p no:cacheprovider -m slow

bench: deps
	$(PYTHON) -m bench
