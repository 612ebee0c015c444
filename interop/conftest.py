"""Fixtures of the interop suite: the broker under test and clients connected to it.

LEVERET_INTEROP_BROKER=rabbitmq runs the same tests against a throwaway RabbitMQ node, to prove that
each test encodes real RabbitMQ behaviour; the default is Leveret.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel

from interop.brokers import (
    DEFAULT_LIMITS,
    Broker,
    LeveretBroker,
    RabbitMQBroker,
    ResourceLimits,
    TlsSettings,
    rabbitmq_server_script,
)
from interop.clients import NODE_DIR, pika_connection

BROKER_KIND = os.environ.get("LEVERET_INTEROP_BROKER", "leveret")


def new_broker(
    workdir: Path, limits: ResourceLimits = DEFAULT_LIMITS, tls: TlsSettings | None = None, **options: Any
) -> Broker:
    """`options`: the Broker's keyword options (management, users)."""
    if BROKER_KIND == "leveret":
        return LeveretBroker(workdir, limits, tls, **options)
    if BROKER_KIND == "rabbitmq":
        script = rabbitmq_server_script()
        if script is None:
            pytest.skip("LEVERET_INTEROP_BROKER=rabbitmq but rabbitmq-server is not installed")
        return RabbitMQBroker(workdir, script, limits, tls, **options)
    raise pytest.UsageError(f"LEVERET_INTEROP_BROKER must be 'leveret' or 'rabbitmq', not {BROKER_KIND!r}")


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """One broker shared by the whole session; tests keep apart through unique names."""
    instance = new_broker(tmp_path_factory.mktemp("broker"))
    try:
        instance.start()
        yield instance
    finally:
        instance.close()


@pytest.fixture
def private_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Broker]]:
    """Factory of brokers that a test may stop, kill and restart, optionally with resource limits; all are
    stopped when the test ends."""
    with ExitStack() as stack:

        def start(
            limits: ResourceLimits = DEFAULT_LIMITS, tls: TlsSettings | None = None, **options: Any
        ) -> Broker:
            instance = new_broker(tmp_path_factory.mktemp("private-broker"), limits, tls, **options)
            stack.callback(instance.close)
            instance.start()
            return instance

        yield start


@pytest.fixture
def connection(broker: Broker) -> Iterator[pika.BlockingConnection]:
    with pika_connection(broker.url) as conn:
        yield conn


@pytest.fixture
def channel(connection: pika.BlockingConnection) -> BlockingChannel:
    return connection.channel()


@pytest.fixture(scope="session")
def node_modules() -> Path:
    """The amqplib install under interop/node (npm ci on first use when CI has not installed it)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are not installed")
    if not (NODE_DIR / "node_modules" / "amqplib").is_dir():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True, timeout=300)
    return NODE_DIR / "node_modules"
