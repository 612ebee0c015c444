"""Processes of a local cluster on loopback, for trying it out and for tests: etcd members and nodes.

Ports are chosen at run time (bound to port 0, then released), data lives in a directory the caller
gives, and `stop` ends every process started here.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
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

    def restart(self, index: int) -> None:
        """Start a killed member again on its data dir and ports."""
        binary = etcd_binary()
        assert binary is not None
        self._spawn(binary, self.members[index], state="existing")
        self.wait_ready([self.members[index]])

    def stop(self) -> None:
        """Kill every member: their data is throwaway, and a graceful stop of a whole cluster takes seconds
        (each member in turn waits for the leaving leader)."""
        for index in range(len(self.members)):
            self.kill(index)


def python_command() -> list[str]:
    """The command that runs Leveret with this interpreter."""
    return [sys.executable, "-m", "leveret"]
