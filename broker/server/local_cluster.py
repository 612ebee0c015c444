"""Processes of a local cluster on loopback, for trying it out and for tests: etcd members and nodes.

Ports are chosen at run time (bound to port 0, then released), data lives in a directory the caller
gives, and `stop` ends every process started here.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

# etcd's defaults are 100 ms heartbeats and a 1 s election timeout; they suit loopback too.
_ETCD_READY_TIMEOUT = 20.0
_NODE_READY_TIMEOUT = 30.0


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback ports free right now (held together, so they differ)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def etcd_binary() -> str | None:
    return shutil.which("etcd") or next(
        (path for path in ("/usr/bin/etcd", "/usr/sbin/etcd") if Path(path).exists()), None
    )


@dataclass
class EtcdMember:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"


@dataclass
class EtcdCluster:
    """`size` etcd members on loopback, each with its own data dir under `directory`."""

    directory: Path
    size: int = 3
    members: list[EtcdMember] = field(default_factory=list)
    _token: str = ""

    def start(self) -> EtcdCluster:
        binary = etcd_binary()
        if binary is None:
            raise FileNotFoundError("etcd not found (Debian: apt-get install etcd-server)")
        self.directory.mkdir(parents=True, exist_ok=True)
        ports = free_ports(2 * self.size)
        self._token = f"leveret-{time.monotonic_ns()}"
        self.members = [
            EtcdMember(
                f"etcd{i}",
                ports[2 * i],
                ports[2 * i + 1],
                self.directory / f"etcd{i}",
                self.directory / f"etcd{i}.log",
            )
            for i in range(self.size)
        ]
        for member in self.members:
            self._spawn(binary, member, state="new")
        self.wait_ready()
        return self

    @property
    def endpoints(self) -> list[str]:
        return [member.client_url for member in self.members]

    def _spawn(self, binary: str, member: EtcdMember, *, state: str) -> None:
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        command = [
            binary,
            f"--name={member.name}",
            f"--data-dir={member.data_dir}",
            f"--listen-client-urls={member.client_url}",
            f"--advertise-client-urls={member.client_url}",
            f"--listen-peer-urls={member.peer_url}",
            f"--initial-advertise-peer-urls={member.peer_url}",
            f"--initial-cluster={initial}",
            f"--initial-cluster-state={state}",
            f"--initial-cluster-token={self._token}",
            "--logger=zap",
            "--log-outputs=stderr",
            "--log-level=warn",
        ]
        log = member.log_path.open("ab")
        member.process = subprocess.Popen(command, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()

    def wait_ready(self, members: list[EtcdMember] | None = None) -> None:
        """Until each member answers a linearizable read (so the cluster has a leader)."""
        deadline = time.monotonic() + _ETCD_READY_TIMEOUT
        for member in members or self.members:
            while True:
                if member.process is not None and member.process.poll() is not None:
                    raise RuntimeError(f"{member.name} exited: {member.log_path.read_text()[-2000:]}")
                with contextlib.suppress(httpx.HTTPError):
                    answer = httpx.post(f"{member.client_url}/v3/kv/range", json={"key": "AA=="}, timeout=1)
                    if answer.status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{member.name} not ready: {member.log_path.read_text()[-2000:]}")
                time.sleep(0.05)

    def kill(self, index: int) -> None:
        """kill -9 one member."""
        process = self.members[index].process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def restart(self, *indexes: int) -> None:
        """Start killed members again on their data dirs and ports (all at once: a member alone waits for
        a quorum)."""
        binary = etcd_binary()
        assert binary is not None
        for index in indexes:
            self._spawn(binary, self.members[index], state="existing")
        self.wait_ready([self.members[index] for index in indexes])

    def stop(self) -> None:
        """Kill every member: their data is throwaway, and a graceful stop of a whole cluster takes seconds
        (each member in turn waits for the leaving leader)."""
        for index in range(len(self.members)):
            self.kill(index)


def python_command() -> list[str]:
    """The command that runs Leveret with this interpreter."""
    return [sys.executable, "-m", "leveret"]


def amqp_answers(port: int) -> bool:
    """True once 127.0.0.1:port answers the AMQP protocol header (with connection.start)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"AMQP\x00\x00\x09\x01")
            return sock.recv(1) == b"\x01"
    except OSError:
        return False


@dataclass
class LocalNode:
    name: str
    amqp_port: int
    peer_port: int
    management_port: int | None
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def amqp_url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/"

    @property
    def management_url(self) -> str | None:
        return None if self.management_port is None else f"http://127.0.0.1:{self.management_port}/"


@dataclass
class LocalCluster:
    """`size` Leveret nodes and up to 3 etcd members on loopback, sharing one cluster file in `directory`."""

    directory: Path
    size: int = 3
    management: bool = False
    log_level: str = "info"
    etcd_request_timeout: float | None = None  # cluster.etcd.request_timeout; None: the default
    started: int | None = None  # how many of the nodes `start` starts (None: all); the others later
    replica_log_entries: int | None = None  # cluster.replica_log_entries; None: the default
    load_definitions: Path | None = None  # every node's load_definitions file
    memory_budget: str | None = None  # resources.message_memory_budget; None: the default
    lease_ttl: int | None = None  # cluster.lease_ttl; None: the default
    etcd: EtcdCluster = field(init=False)
    nodes: list[LocalNode] = field(default_factory=list)

    @property
    def config_path(self) -> Path:
        return self.directory / "cluster.yaml"

    def start(self) -> LocalCluster:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.etcd = EtcdCluster(self.directory / "etcd", min(self.size, 3))
        try:
            self.etcd.start()
            ports = free_ports(3 * self.size)
            self.nodes = [
                LocalNode(
                    f"node{i + 1}",
                    ports[3 * i],
                    ports[3 * i + 1],
                    ports[3 * i + 2] if self.management else None,
                    self.directory / f"node{i + 1}.log",
                )
                for i in range(self.size)
            ]
            self._write_config()
            first = self.nodes[: self.started]
            for node in first:
                self.start_node(node)
            for node in first:
                self.wait_node(node)
        except BaseException:
            self.stop()
            raise
        return self

    def _write_config(self) -> None:
        lines = [f"log_level: {self.log_level}"]
        if self.load_definitions is not None:
            lines.append(f"load_definitions: {json_string(str(self.load_definitions))}")
        if self.memory_budget is not None:
            lines += ["resources:", f"  message_memory_budget: {json_string(self.memory_budget)}"]
        lines += ["cluster:", "  nodes:"]
        for node in self.nodes:
            lines += [
                f"    - name: {node.name}",
                f'      amqp: "127.0.0.1:{node.amqp_port}"',
                f'      peer: "127.0.0.1:{node.peer_port}"',
                f"      data_dir: {json_string(str(self.directory / node.name))}",
            ]
            if node.management_port is not None:
                lines.append(f'      management: "127.0.0.1:{node.management_port}"')
        if self.replica_log_entries is not None:
            lines.append(f"  replica_log_entries: {self.replica_log_entries}")
        if self.lease_ttl is not None:
            lines.append(f"  lease_ttl: {self.lease_ttl}")
        lines += ["  etcd:", "    endpoints: [" + ", ".join(f'"{url}"' for url in self.etcd.endpoints) + "]"]
        if self.etcd_request_timeout is not None:
            lines.append(f"    request_timeout: {self.etcd_request_timeout}")
        self.config_path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def start_node(self, node: LocalNode) -> None:
        log = node.log_path.open("ab")
        command = [*python_command(), "--config", str(self.config_path), "--node", node.name]
        node.process = subprocess.Popen(command, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()

    def wait_node(self, node: LocalNode) -> None:
        deadline = time.monotonic() + _NODE_READY_TIMEOUT
        while not amqp_answers(node.amqp_port):
            if node.process is not None and node.process.poll() is not None:
                raise RuntimeError(f"{node.name} exited: {node.log_path.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{node.name} did not start: {node.log_path.read_text()[-3000:]}")
            time.sleep(0.05)

    def kill_node(self, index: int) -> None:
        process = self.nodes[index].process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def stop(self) -> None:
        """SIGTERM every node (each closes its clients and commits), then the etcd members."""
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                node.process.terminate()
        for node in self.nodes:
            if node.process is not None:
                try:
                    node.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    node.process.kill()
                    node.process.wait()
        if hasattr(self, "etcd"):
            self.etcd.stop()


def json_string(text: str) -> str:
    """`text` as a YAML scalar that needs no escaping rules of its own (JSON strings are YAML)."""
    return json.dumps(text)


def dev_cluster_main(argv: list[str]) -> int:
    """`leveret dev-cluster`: a whole cluster on loopback until Ctrl-C or SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="leveret dev-cluster",
        description="Start etcd members and Leveret nodes on loopback ports chosen at run time.",
    )
    parser.add_argument("--nodes", type=int, default=3, help="how many nodes (and etcd members); default 3")
    parser.add_argument("--management", action="store_true", help="give each node a management listener")
    parser.add_argument("--dir", help="where to keep data and logs (default: a temporary directory, removed)")
    args = parser.parse_args(argv)
    if not 1 <= args.nodes <= 9:
        parser.error("--nodes must be between 1 and 9")
    if etcd_binary() is None:
        print("leveret dev-cluster: etcd not found (Debian: apt-get install etcd-server)", file=sys.stderr)
        return 1
    temporary = tempfile.TemporaryDirectory(prefix="leveret-dev-cluster-") if args.dir is None else None
    directory = Path(args.dir if args.dir is not None else temporary.name)  # type: ignore[union-attr]
    stop_requested = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    cluster = LocalCluster(directory, args.nodes, management=args.management)
    try:
        try:
            cluster.start()
        except (RuntimeError, OSError) as error:  # a process that exits or never answers (TimeoutError)
            print(f"leveret dev-cluster: could not start: {error}", file=sys.stderr)
            return 1
        print(f"etcd: {', '.join(cluster.etcd.endpoints)}")
        for node in cluster.nodes:
            line = f"{node.name}: {node.amqp_url}"
            if node.management_url is not None:
                line += f"  management {node.management_url}"
            print(line)
        print(
            f"configuration {cluster.config_path}, logs in {directory}; Ctrl-C stops everything", flush=True
        )
        while not stop_requested:
            for node in cluster.nodes:
                if node.process is not None and node.process.poll() is not None:
                    print(
                        f"{node.name} exited ({node.process.returncode}); see {node.log_path}",
                        file=sys.stderr,
                    )
                    node.process = None
            time.sleep(0.2)
    finally:
        cluster.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if temporary is not None:
            temporary.cleanup()
    print("stopped")
    return 0
