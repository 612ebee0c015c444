"""The clusters the cluster benches compare, behind one interface: Leveret nodes with their etcd members
(`broker/server/local_cluster.py`) and RabbitMQ nodes (`interop/rabbitmq_cluster.py`), all on loopback
ports chosen at run time, with a management API on every node (where queue leaders are read)."""

from __future__ import annotations

import time
import urllib.parse
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import httpx
import pika

from interop.rabbitmq_cluster import RabbitMQCluster
from leveret.broker.server.local_cluster import LocalCluster

# What broker/server/leadership.py logs when a node lets a queue go at its lease's deadline.
LEASE_LAPSED = "this node's lease may have lapsed"

QUORUM = {"x-queue-type": "quorum"}
LEADER_TIMEOUT = 30.0


class BenchCluster(ABC):
    kind = ""

    def __init__(self, directory: Path, size: int) -> None:
        self.directory = directory
        self.size = size

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def stop(self) -> None: ...

    @abstractmethod
    def port(self, index: int) -> int: ...

    @abstractmethod
    def pid(self, index: int) -> int | None:
        """The node's process id, None while it is down."""

    @abstractmethod
    def management_url(self, index: int) -> str: ...

    @abstractmethod
    def node_name(self, index: int) -> str:
        """The node's name as its management API gives it (a queue's `leader`)."""

    @abstractmethod
    def kill(self, index: int) -> None:
        """kill -9 the node."""

    @abstractmethod
    def restart(self, index: int) -> None:
        """Start a killed node again on its data; returns once it serves AMQP and its cluster counts it."""

    def leader_losses(self) -> int | None:
        """How many times so far a node let its queues go for a lapsed lease (None: not known here)."""
        return None

    def helper_pids(self) -> dict[str, int]:
        """Processes besides the nodes that work for every message or metadata change (etcd), by name."""
        return {}

    def url(self, index: int) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port(index)}/"

    def live(self) -> list[int]:
        return [index for index in range(self.size) if self.pid(index) is not None]

    def pids(self) -> list[int]:
        return [pid for index in range(self.size) if (pid := self.pid(index)) is not None]

    def queue(self, name: str) -> dict[str, Any]:
        """The queue's management record from the first live node that answers."""
        path = f"api/queues/%2F/{urllib.parse.quote(name, safe='')}"
        error: Exception | None = None
        for index in self.live():
            try:
                answer = httpx.get(self.management_url(index) + path, auth=("guest", "guest"), timeout=5)
                answer.raise_for_status()
                record: dict[str, Any] = answer.json()
                return record
            except (httpx.HTTPError, ValueError) as exc:
                error = exc
        raise RuntimeError(f"{self.kind}: no live node answered {path}: {error}")

    def leader_of(self, queue: str, other_than: int | None = None) -> int:
        """Index of the node that leads the queue (`leader` in its management record), waiting for one;
        `other_than`: wait for a leader that is not that node (after its kill)."""
        names = [self.node_name(index) for index in range(self.size)]
        deadline = time.monotonic() + LEADER_TIMEOUT
        while True:
            leader = self.queue(queue).get("leader")
            if leader in names and names.index(leader) != other_than:
                return names.index(leader)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.kind}: queue {queue!r} has no leader after {LEADER_TIMEOUT:.0f}s")
            time.sleep(0.05)

    def declare(self, queues: list[str], on: list[int], arguments: dict[str, Any] | None = None) -> None:
        """Durable quorum queues, queue i declared through node on[i] (RabbitMQ places its leader there)."""
        for queue, index in zip(queues, on, strict=True):
            with pika.BlockingConnection(pika.URLParameters(self.url(index))) as connection:
                arguments = {**QUORUM, **(arguments or {})}
                connection.channel().queue_declare(queue, durable=True, arguments=arguments)

    def delete(self, queues: list[str], exchanges: tuple[str, ...] = ()) -> None:
        with pika.BlockingConnection(pika.URLParameters(self.url(self.live()[0]))) as connection:
            channel = connection.channel()
            for queue in queues:
                channel.queue_delete(queue)
            for exchange in exchanges:
                channel.exchange_delete(exchange)


class LeveretBenchCluster(BenchCluster):
    kind = "leveret"

    def __init__(self, directory: Path, size: int, lease_ttl: int | None = None) -> None:
        super().__init__(directory, size)
        self.cluster = LocalCluster(directory, size, management=True, log_level="warning",
                                    lease_ttl=lease_ttl)

    def start(self) -> None:
        self.cluster.start()
        for index in range(self.size):
            self._wait_management(index)

    def stop(self) -> None:
        self.cluster.stop()

    def port(self, index: int) -> int:
        return self.cluster.nodes[index].amqp_port

    def pid(self, index: int) -> int | None:
        process = self.cluster.nodes[index].process
        return process.pid if process is not None and process.poll() is None else None

    def management_url(self, index: int) -> str:
        url = self.cluster.nodes[index].management_url
        assert url is not None
        return url

    def node_name(self, index: int) -> str:
        return self.cluster.nodes[index].name

    def kill(self, index: int) -> None:
        self.cluster.kill_node(index)

    def restart(self, index: int) -> None:
        node = self.cluster.nodes[index]
        self.cluster.start_node(node)
        self.cluster.wait_node(node)
        self._wait_management(index)

    def leader_losses(self) -> int:
        """How many times a node let a queue go because its lease may have lapsed (its log says so), so
        far: the queue is without a leader until that node's next keepalive answer or a new election."""
        return sum(node.log_path.read_text(errors="replace").count(LEASE_LAPSED)
                   for node in self.cluster.nodes if node.log_path.exists())

    def helper_pids(self) -> dict[str, int]:
        return {member.name: member.process.pid for member in self.cluster.etcd.members
                if member.process is not None and member.process.poll() is None}

    def _wait_management(self, index: int) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(self.management_url(index) + "api/overview", auth=("guest", "guest"), timeout=2)
                return
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


class RabbitMQBenchCluster(BenchCluster):
    kind = "rabbitmq"

    def __init__(self, directory: Path, size: int) -> None:
        super().__init__(directory, size)
        self.cluster = RabbitMQCluster(directory, size)

    def start(self) -> None:
        self.cluster.start()

    def stop(self) -> None:
        self.cluster.stop()

    def port(self, index: int) -> int:
        return self.cluster.nodes[index].port

    def pid(self, index: int) -> int | None:
        node = self.cluster.nodes[index]
        return node.pid if node.running else None

    def management_url(self, index: int) -> str:
        return self.cluster.nodes[index].management_url + "/"

    def node_name(self, index: int) -> str:
        return self.cluster.nodes[index].nodename

    def kill(self, index: int) -> None:
        self.cluster.kill(index)

    def restart(self, index: int) -> None:
        self.cluster.restart(index)


def new_cluster(kind: str, directory: Path, size: int, lease_ttl: int | None = None) -> BenchCluster:
    """A cluster of `kind`; `lease_ttl` is Leveret's cluster.lease_ttl (None: its default)."""
    if kind == "rabbitmq":
        return RabbitMQBenchCluster(directory, size)
    return LeveretBenchCluster(directory, size, lease_ttl)
