"""A network namespace joined to the host by a veth pair, and nftables DROP rules inside it.

Everything stays on this machine: the pair's two addresses are in 10.231.N.0/30, the namespace has no
other interface and no route elsewhere. `NamespacedCluster` runs one node of a FaultCluster in it; the
others, the etcd proxies and the clients stay on the host and reach it through the pair.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

from interop.brokers import amqp_ready
from leveret.broker.server.local_cluster import LocalNode

from .cluster import FaultCluster

TABLE = "leveret_faults"


def netns_available() -> str | None:
    """None when namespaces and nftables can be used here, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian: iproute2, nftables)"
    return None


def _run(*command: str, input_text: str | None = None) -> None:
    subprocess.run(command, check=True, input=input_text, text=True, capture_output=True)


@dataclass
class Netns:
    index: int = field(default_factory=lambda: random.randrange(256))
    name: str = ""

    def __post_init__(self) -> None:
        self.name = f"lvf{os.getpid() % 100000}n{self.index}"

    @property
    def host_veth(self) -> str:
        return f"lvfh{self.index}"

    @property
    def inner_veth(self) -> str:
        return f"lvfn{self.index}"

    @property
    def host_ip(self) -> str:
        return f"10.231.{self.index}.1"

    @property
    def inner_ip(self) -> str:
        return f"10.231.{self.index}.2"

    def create(self) -> Netns:
        _run("ip", "netns", "add", self.name)
        try:
            _run("ip", "link", "add", self.host_veth, "type", "veth", "peer", "name", self.inner_veth)
            _run("ip", "link", "set", self.inner_veth, "netns", self.name)
            _run("ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_veth)
            _run("ip", "link", "set", self.host_veth, "up")
            _run("ip", "-n", self.name, "addr", "add", f"{self.inner_ip}/30", "dev", self.inner_veth)
            _run("ip", "-n", self.name, "link", "set", self.inner_veth, "up")
            _run("ip", "-n", self.name, "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise
        return self

    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def drop(self, ports: list[int] | None = None) -> None:
        """DROP, inside the namespace, every packet on the pair (ports None), or only those to and from
        these host ports."""
        match = f'iifname "{self.inner_veth}"'
        out_match = f'oifname "{self.inner_veth}"'
        if ports is not None:
            listed = ", ".join(str(port) for port in ports)
            match += f" tcp sport {{ {listed} }}"
            out_match += f" tcp dport {{ {listed} }}"
        rules = (
            f"table inet {TABLE} {{\n"
            f"  chain input {{ type filter hook input priority 0; policy accept; {match} drop; }}\n"
            f"  chain output {{ type filter hook output priority 0; policy accept; {out_match} drop; }}\n"
            "}\n"
        )
        self.heal()
        _run("ip", "netns", "exec", self.name, "nft", "-f", "-", input_text=rules)

    def heal(self) -> None:
        subprocess.run(
            ["ip", "netns", "exec", self.name, "nft", "delete", "table", "inet", TABLE], capture_output=True
        )

    def close(self) -> None:
        """Kills what still runs inside, then removes the namespace (its veth end goes, and with it the
        host's)."""
        pids = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True, text=True).stdout
        for pid in pids.split():
            try:
                os.kill(int(pid), 9)
            except (ProcessLookupError, ValueError):
                pass
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)
        subprocess.run(["ip", "link", "del", self.host_veth], capture_output=True)


@dataclass
class NamespacedCluster(FaultCluster):
    """The last node runs in `netns`; etcd is reached through proxies on the host end of the pair."""

    netns: Netns = field(default_factory=Netns)

    def __post_init__(self) -> None:
        self.proxy_etcd = True
        self.proxy_peers = False
        self.proxy_host = self.netns.host_ip

    @property
    def inside(self) -> LocalNode:
        return self.nodes[-1]

    def adjust_document(self, document: dict[str, Any]) -> None:
        # The namespaced node's clients are not on its loopback: guest may log in from anywhere here.
        document["users"] = [
            {"name": "guest", "password": "guest", "tags": ["administrator"], "loopback_only": False}
        ]
        document["permissions"] = [
            {"user": "guest", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}
        ]
        for entry in document["cluster"]["nodes"]:
            if entry["name"] == self.inside.name:
                entry["amqp"] = f"{self.netns.inner_ip}:{self.inside.amqp_port}"
                entry["peer"] = f"{self.netns.inner_ip}:{self.inside.peer_port}"

    def node_command(self, node: LocalNode) -> list[str]:
        command = super().node_command(node)
        return [*self.netns.exec_prefix(), *command] if node is self.inside else command

    def url(self, node: LocalNode) -> str:
        if node is self.inside:
            return f"amqp://guest:guest@{self.netns.inner_ip}:{node.amqp_port}/"
        return node.amqp_url

    def wait_node(self, node: LocalNode) -> None:
        if node is not self.inside:
            super().wait_node(node)
            return
        deadline = time.monotonic() + 30
        while not amqp_ready(self.netns.inner_ip, node.amqp_port):
            if node.process is not None and node.process.poll() is not None:
                raise RuntimeError(f"{node.name} exited: {node.log_path.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{node.name} did not start: {node.log_path.read_text()[-3000:]}")
            time.sleep(0.05)

    def start(self) -> NamespacedCluster:
        self.netns.create()
        try:
            super().start()
        except BaseException:
            self.netns.close()
            raise
        return self

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            self.netns.close()
