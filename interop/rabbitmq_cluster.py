"""A private RabbitMQ cluster on loopback: `size` nodes (rmq1@localhost, ...) sharing one epmd on a port
chosen at run time and one Erlang cookie in the cluster's own HOME, each node with its own mnesia dir, logs
and AMQP, distribution and management ports. Nothing of the system install (its cookie, epmd, config).

The nodes find each other by classic config peer discovery: the first node starts alone, the others
start together and join it. A node can be killed (kill -9) and started again on its data; it rejoins.

    cluster = RabbitMQCluster(directory, size=3).start()
    cluster.nodes[0].url, cluster.leader_of("q"), cluster.kill(1), cluster.restart(1), cluster.stop()
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from interop.brokers import (
    HOST,
    BrokerStartError,
    RabbitMQBroker,
    free_port,
    port_listening,
    rabbitmq_server_script,
)

# A cluster whose nodes do not all show as running in /api/nodes this long after the last one accepted
# AMQP did not form.
FORMATION_TIMEOUT = 60.0


def node_name(index: int) -> str:
    return f"rmq{index + 1}@localhost"


class RabbitMQClusterNode(RabbitMQBroker):
    """One node of a RabbitMQCluster: the cluster's epmd, cookie (HOME) and peer list."""

    def __init__(self, workdir: Path, script: str, cluster_home: Path, epmd_port: int, index: int,
                 peers: list[str]) -> None:
        super().__init__(workdir, script, management=True)
        self.cluster_home = cluster_home
        self.epmd_port = epmd_port
        self.nodename = node_name(index)
        settings = {
            "cluster_formation.peer_discovery_backend": "classic_config",
            **{f"cluster_formation.classic_config.nodes.{i + 1}": peer for i, peer in enumerate(peers)},
        }
        with (workdir / "rabbitmq.conf").open("a") as conf:
            conf.write("".join(f"{key} = {value}\n" for key, value in settings.items()))

    def environment(self) -> dict[str, str]:
        env = super().environment()
        env["HOME"] = str(self.cluster_home)  # where the cluster's shared cookie is
        return env

    def _start_epmd(self) -> None:
        """The cluster runs the one epmd its nodes share."""

    def discard(self) -> None:
        """kill -9 and close the log files: the end of a throwaway node."""
        try:
            self.kill()
        finally:
            self._close_logs()

    def management_get(self, path: str, timeout: float = 5.0) -> Any:
        answer = httpx.get(f"{self.management_url}{path}", auth=("guest", "guest"), timeout=timeout)
        answer.raise_for_status()
        return answer.json()


class RabbitMQCluster:
    def __init__(self, directory: Path, size: int = 3, script: str | None = None) -> None:
        found = script or rabbitmq_server_script()
        if found is None:
            raise BrokerStartError("rabbitmq-server is not installed")
        self.directory = directory
        self.size = size
        self.home = directory / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        cookie = self.home / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(secrets.token_hex(16).upper())
            cookie.chmod(0o400)  # Erlang refuses a cookie others can read
        self.epmd_port = free_port()
        peers = [node_name(i) for i in range(size)]
        self.nodes = [
            RabbitMQClusterNode(directory / f"rmq{i + 1}", found, self.home, self.epmd_port, i, peers)
            for i in range(size)
        ]
        self._epmd: subprocess.Popen[bytes] | None = None

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def start(self) -> RabbitMQCluster:
        """The first node alone (it forms the cluster), then the others together; returns once every node
        shows as running on the first node's management API."""
        try:
            self._start_epmd()
            self.nodes[0].start()
            with ThreadPoolExecutor(max(self.size - 1, 1)) as pool:
                for started in [pool.submit(node.start) for node in self.nodes[1:]]:
                    started.result()
            self.wait_running(range(self.size))
        except BaseException:
            self.stop()
            raise
        return self

    def running_nodes(self, via: int | None = None) -> set[str]:
        """Node names that a live node's management API reports as running."""
        candidates = [via] if via is not None else [i for i, n in enumerate(self.nodes) if n.running]
        for index in candidates:
            try:
                nodes = self.nodes[index].management_get("/api/nodes")
            except (httpx.HTTPError, ValueError):
                continue
            return {node["name"] for node in nodes if node.get("running")}
        return set()

    def wait_running(self, indexes: range | list[int], timeout: float = FORMATION_TIMEOUT) -> None:
        wanted = {node_name(i) for i in indexes}
        deadline = time.monotonic() + timeout
        while not wanted <= self.running_nodes():
            if time.monotonic() > deadline:
                raise BrokerStartError(
                    f"RabbitMQ cluster: {sorted(wanted - self.running_nodes())} not running after "
                    f"{timeout:.0f}s\n{self.nodes[0].diagnostics()}"
                )
            time.sleep(0.25)

    def kill(self, index: int) -> None:
        """kill -9 one node (and its child processes)."""
        self.nodes[index].kill()

    def restart(self, index: int) -> None:
        """Start a stopped or killed node again on its data; returns once the cluster counts it running."""
        node = self.nodes[index]
        if node.running:
            node.stop()
        node.start()
        self.wait_running([index])

    def queue(self, name: str, vhost: str = "/", via: int | None = None) -> dict[str, Any]:
        """The queue's management record (`leader`, `members`, `online` for a quorum queue), from a live
        node."""
        path = f"/api/queues/{urllib.parse.quote(vhost, safe='')}/{urllib.parse.quote(name, safe='')}"
        candidates = [via] if via is not None else [i for i, n in enumerate(self.nodes) if n.running]
        error: Exception | None = None
        for index in candidates:
            try:
                record: dict[str, Any] = self.nodes[index].management_get(path)
                return record
            except (httpx.HTTPError, ValueError) as exc:
                error = exc
        raise BrokerStartError(f"no live node answered {path}: {error}")

    def index_of(self, name: str) -> int:
        return [node.nodename for node in self.nodes].index(name)

    def leader_of(self, queue: str, vhost: str = "/", timeout: float = 30.0) -> int:
        """Index of the node leading the quorum queue, once it has a leader."""
        deadline = time.monotonic() + timeout
        while True:
            leader = self.queue(queue, vhost).get("leader")
            if leader in {node.nodename for node in self.nodes}:
                return self.index_of(leader)
            if time.monotonic() > deadline:
                raise TimeoutError(f"quorum queue {queue!r} has no leader after {timeout:.0f}s")
            time.sleep(0.1)

    def stop(self) -> None:
        """Kill every node (throwaway data; a graceful stop takes seconds per node), then epmd."""
        for node in self.nodes:
            node.discard()
        if self._epmd is not None:
            self._epmd.terminate()
            self._epmd.wait(10)
            self._epmd = None

    def __enter__(self) -> RabbitMQCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _start_epmd(self) -> None:
        epmd = shutil.which("epmd")
        if epmd is None:
            raise BrokerStartError("epmd (package erlang-base) is not installed")
        self._epmd = subprocess.Popen(
            [epmd, "-port", str(self.epmd_port), "-address", HOST],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while not port_listening(HOST, self.epmd_port):
            if self._epmd.poll() is not None or time.monotonic() > deadline:
                raise BrokerStartError(f"epmd did not listen on {HOST}:{self.epmd_port}")
            time.sleep(0.05)
