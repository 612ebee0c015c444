"""A local cluster to break: LocalCluster's etcd members and nodes, with proxies on its links and the
faults of processes (kill -9, SIGSTOP/SIGCONT, restarts) and of etcd members.

Peer links go through one proxy per pair (the dialing node's file names the proxy as the other's `peer`
address: each node gets its own copy of the cluster file, differing only there). etcd endpoints go
through one proxy per member, the same for every node (the endpoints are part of the cluster identity);
a rule for one node finds that node's connections by their owning process (`owners.py`).
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pika
import pytest
import yaml

from leveret.broker.server.local_cluster import LocalCluster, LocalNode, etcd_binary, python_command

from .owners import tagger
from .proxy import FaultProxy, ProxyHub


@dataclass
class FaultCluster(LocalCluster):
    proxy_peers: bool = True
    proxy_etcd: bool = True
    # Extra keys of the `cluster:` section (lease_ttl, peer_timeout...).
    settings: dict[str, Any] = field(default_factory=dict)
    hub: ProxyHub | None = None
    peer_proxies: dict[tuple[str, str], FaultProxy] = field(default_factory=dict)  # (dialer, acceptor)
    etcd_proxies: list[FaultProxy] = field(default_factory=list)
    proxy_host: str = "127.0.0.1"  # where the etcd proxies listen

    def node_config(self, node: LocalNode) -> Path:
        return self.directory / f"cluster-{node.name}.yaml"

    def _write_config(self) -> None:
        super()._write_config()
        document = yaml.safe_load(self.config_path.read_text(encoding="utf-8"))
        document["cluster"].update(self.settings)
        self.adjust_document(document)
        if self.hub is None and (self.proxy_peers or self.proxy_etcd):
            self.hub = ProxyHub()
        if self.proxy_etcd and not self.etcd_proxies:
            assert self.hub is not None
            owners = tagger(self.node_processes)
            for member in self.etcd.members:
                self.etcd_proxies.append(
                    self.hub.add(("127.0.0.1", member.client_port), owners, host=self.proxy_host)
                )
        if self.etcd_proxies:
            document["cluster"]["etcd"]["endpoints"] = [
                f"http://{self.proxy_host}:{proxy.port}" for proxy in self.etcd_proxies
            ]
        self.config_path.write_text(yaml.safe_dump(document), encoding="utf-8")
        for node in self.nodes:
            own = yaml.safe_load(yaml.safe_dump(document))
            if self.proxy_peers:
                for entry in own["cluster"]["nodes"]:
                    if node.name < entry["name"]:  # the first name dials
                        proxy = self._peer_proxy(node.name, self.node(entry["name"]))
                        entry["peer"] = f"127.0.0.1:{proxy.port}"
            self.node_config(node).write_text(yaml.safe_dump(own), encoding="utf-8")

    def adjust_document(self, document: dict[str, Any]) -> None:
        """A subclass's changes to the file every node shares."""

    def _peer_proxy(self, dialer: str, acceptor: LocalNode) -> FaultProxy:
        key = (dialer, acceptor.name)
        if key not in self.peer_proxies:
            assert self.hub is not None
            self.peer_proxies[key] = self.hub.add(("127.0.0.1", acceptor.peer_port))
        return self.peer_proxies[key]

    def node_command(self, node: LocalNode) -> list[str]:
        return [*python_command(), "--config", str(self.node_config(node)), "--node", node.name]

    def start_node(self, node: LocalNode) -> None:
        log = node.log_path.open("ab")
        command = self.node_command(node)
        node.process = subprocess.Popen(command, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()

    def node_processes(self) -> dict[int, str]:
        return {
            node.process.pid: node.name
            for node in self.nodes
            if node.process is not None and node.process.poll() is None
        }

    def node(self, name: str) -> LocalNode:
        return next(node for node in self.nodes if node.name == name)

    def index(self, name: str) -> int:
        return [node.name for node in self.nodes].index(name)

    def url(self, node: LocalNode) -> str:
        return node.amqp_url

    @property
    def urls(self) -> list[str]:
        return [self.url(node) for node in self.nodes]

    # -- process faults ------------------------------------------------------------------------------

    def kill(self, name: str) -> None:
        self.kill_node(self.index(name))

    def restart(self, name: str) -> None:
        node = self.node(name)
        self.start_node(node)
        self.wait_node(node)

    def terminate(self, name: str) -> None:
        process = self.node(name).process
        if process is not None and process.poll() is None:
            process.terminate()
            process.wait(timeout=30)

    def pause(self, name: str) -> None:
        self._signal(name, signal.SIGSTOP)

    def resume(self, name: str) -> None:
        self._signal(name, signal.SIGCONT)

    def _signal(self, name: str, signum: int) -> None:
        process = self.node(name).process
        if process is not None and process.poll() is None:
            os.kill(process.pid, signum)

    # -- link faults ---------------------------------------------------------------------------------

    def peer_links_of(self, name: str) -> list[FaultProxy]:
        return [proxy for (a, b), proxy in self.peer_proxies.items() if name in (a, b)]

    def heal(self) -> None:
        for proxy in [*self.peer_proxies.values(), *self.etcd_proxies]:
            proxy.heal()

    # -- what etcd says ------------------------------------------------------------------------------

    def etcd_get(self, key: str) -> bytes | None:
        encoded = base64.b64encode(key.encode()).decode()
        for endpoint in self.etcd.endpoints:
            with contextlib.suppress(httpx.HTTPError):
                answer = httpx.post(f"{endpoint}/v3/kv/range", json={"key": encoded}, timeout=2).json()
                kvs = answer.get("kvs", [])
                return base64.b64decode(kvs[0]["value"]) if kvs else None
        return None

    def leader_of(self, queue: str, vhost: str = "/") -> str | None:
        value = self.etcd_get(f"/leveret/leader/{quote(vhost, safe='')}/{quote(queue, safe='')}")
        return None if value is None else str(yaml.safe_load(value)["node"])

    def wait_leader(self, queue: str, timeout: float = 20.0, other_than: str | None = None) -> str:
        return self.wait_failover(queue, timeout, other_than)[0]

    def wait_failover(
        self, queue: str, timeout: float = 20.0, other_than: str | None = None
    ) -> tuple[str, float]:
        """The queue's leader once it is not `other_than`, and since when it may have moved: the start of
        the last look that still found `other_than` (or of the wait)."""
        deadline = time.monotonic() + timeout
        since = time.monotonic()
        while True:
            looked = time.monotonic()
            leader = self.leader_of(queue)
            if leader == other_than:
                since = looked
            if leader is not None and leader != other_than:
                return leader, since
            if time.monotonic() > deadline:
                raise AssertionError(f"no leader for {queue} (other than {other_than}) after {timeout} s")
            time.sleep(0.1)

    def stop(self) -> None:
        for node in self.nodes:  # a stopped node does not take SIGTERM until it runs again
            if node.process is not None and node.process.poll() is None:
                os.kill(node.process.pid, signal.SIGCONT)
        try:
            super().stop()
        finally:
            if self.hub is not None:
                self.hub.close()


def messages_cross_nodes(cluster: FaultCluster, timeout: float = 5.0) -> bool:
    """The capability replication and any-node connect bring: a durable queue declared on the first
    node, a confirmed message published on the second, taken from the third."""
    first, second, third = cluster.urls[:3]
    queue = f"probe-cross-{time.monotonic_ns()}"
    arguments = {"x-queue-type": "quorum"}
    with contextlib.closing(pika.BlockingConnection(pika.URLParameters(first))) as connection:
        connection.channel().queue_declare(queue, durable=True, arguments=arguments)
    with contextlib.closing(pika.BlockingConnection(pika.URLParameters(second))) as connection:
        channel = connection.channel()
        channel.confirm_delivery()
        deadline = time.monotonic() + timeout
        while True:  # the declare reaches the second node through etcd's watch
            try:
                channel.queue_declare(queue, passive=True)
                break
            except pika.exceptions.ChannelClosedByBroker:
                if time.monotonic() > deadline:
                    return False
                channel = connection.channel()
                channel.confirm_delivery()
                time.sleep(0.1)
        channel.basic_publish("", queue, b"probe", pika.BasicProperties(delivery_mode=2))
    with contextlib.closing(pika.BlockingConnection(pika.URLParameters(third))) as connection:
        channel = connection.channel()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(pika.exceptions.ChannelClosedByBroker):
                method, _, body = channel.basic_get(queue, auto_ack=True)
                if method is not None:
                    return body == b"probe"
            if channel.is_closed:
                channel = connection.channel()
            time.sleep(0.1)
    return False



def started_fault_cluster(directory: Path, size: int = 3, **options: Any) -> Iterator[FaultCluster]:
    """A module fixture's cluster: started, yielded, stopped (skips the test without etcd)."""
    if etcd_binary() is None:
        pytest.skip("etcd is not installed (Debian: apt-get install etcd-server)")
    started = FaultCluster(directory, size, **options)
    try:
        started.start()
        yield started
    finally:
        started.stop()
