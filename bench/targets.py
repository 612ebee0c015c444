"""The brokers under test, started with interop.brokers on free loopback ports, each in its own temp dir."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from interop.brokers import Broker, LeveretBroker, RabbitMQBroker


class Target:
    """One kind of broker: a long-lived instance for throughput cases, fresh ones for memory cases."""

    def __init__(self, kind: str, root: Path, rabbitmq_script: str | None = None) -> None:
        self.kind = kind
        self.root = root
        self.rabbitmq_script = rabbitmq_script
        self._serial = itertools.count(1)
        self._shared: Broker | None = None

    def _start(self) -> Broker:
        workdir = self.root / f"{self.kind}-{next(self._serial)}"
        broker: Broker
        if self.kind == "rabbitmq":
            assert self.rabbitmq_script is not None
            broker = RabbitMQBroker(workdir, self.rabbitmq_script)
        else:
            broker = LeveretBroker(workdir)
        try:
            broker.start()
        except BaseException:
            broker.close()
            raise
        return broker

    def shared(self) -> Broker:
        if self._shared is None:
            self._shared = self._start()
        return self._shared

    def discard_shared(self) -> None:
        """Stop the shared broker (after a crash or hang); the next case starts a new one."""
        if self._shared is not None:
            self._shared.close()
            self._shared = None

    @contextmanager
    def fresh(self) -> Iterator[Broker]:
        broker = self._start()
        try:
            yield broker
        finally:
            broker.close()

    def close(self) -> None:
        self.discard_shared()
