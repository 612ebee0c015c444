# `make test` sets up a fresh machine (pip, npm, apt) and runs every default test. Inside a virtual
# environment it installs there; outside one it makes .venv first (Debian's system Python refuses
# `pip install`, PEP 668).
IN_VENV := $(shell python3 -c 'import sys; print(int(sys.prefix != sys.base_prefix))' 2>/dev/null)
ifeq ($(IN_VENV),1)
PYTHON ?= python3
else
PYTHON ?= .venv/bin/python
endif
NPM ?= npm
NODE_DIR := interop/node

.PHONY: test deps test-only lint slow bench faults

test: deps test-only

.venv/bin/python:
	python3 -m venv .venv || { echo "cannot make .venv: install python3-venv (apt-get install python3-venv)"; exit 1; }

deps: $(filter .venv/bin/python,$(PYTHON))
	$(PYTHON) -m pip install --quiet -e '.[test]'
	@if [ ! -f $(NODE_DIR)/package.json ]; then :; \
	elif command -v $(NPM) >/dev/null 2>&1; then cd $(NODE_DIR) && $(NPM) ci --no-audit --no-fund --silent; \
	else echo "npm not found: the node amqplib tests will be skipped (install nodejs and npm to run them)"; fi
	@if ! command -v amqp-publish >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq amqp-tools >/dev/null) \
		|| echo "amqp-tools not installed: its interop test will be skipped"; \
	fi
	@if ! command -v etcd >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null) \
		|| echo "etcd-server not installed: the cluster tests will be skipped"; \
	fi
	@# rabbitmqadmin (interop/test_rabbitmqadmin.py) and the RabbitMQ node of the definitions round trip.
	@if ! command -v rabbitmqadmin >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null) \
		|| echo "rabbitmq-server not installed: the rabbitmqadmin and RabbitMQ round-trip tests will be skipped"; \
	fi
	@if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
		|| echo "chromium not installed: the web page's browser tests will be skipped"; \
	fi

# The 20 slowest tests are listed at the end: the default run must stay under 15 minutes.
test-only: lint
	$(PYTHON) -m pytest -q -p no:cacheprovider --durations=20

# ruff, and mypy over the package as installed and as checked out (leveret/ links amqp/, broker/, config/).
lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m mypy

# Soak, crash-loop and other long runs.
slow: deps
	$(PYTHON) -m pytest -q -p no:cacheprovider -m slow

bench: deps
	$(PYTHON) -m bench

# The cluster fault suite (interop/test_cluster_faults.py): each fault's verdict in faults-report.txt.
faults: deps
	LEVERET_FAULTS_REPORT=faults-report.txt $(PYTHON) -m pytest -q -s -p no:cacheprovider -m slow interop/test_cluster_faults.py
