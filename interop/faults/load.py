"""Confirmed load from pika and node amqplib clients, each a process writing its history file.

`Load.start` runs publishers and consumers of both kinds, each given every node's URL, starting at a
different one; `finish` stops the publishers, lets the consumers drain and returns the checker's verdict.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from interop.checker.history import Recorder, read_directory
from interop.checker.verdict import Verdict, check

INTEROP = Path(__file__).resolve().parent.parent
NODE_DIR = INTEROP / "node"
REPO = INTEROP.parent


def node_available() -> bool:
    return shutil.which("node") is not None and (NODE_DIR / "node_modules" / "amqplib").is_dir()


@dataclass
class LoadClient:
    name: str
    role: str
    process: subprocess.Popen[bytes]
    log_path: Path


@dataclass
class Load:
    """Load clients over `urls`: `pika` and `node` publishers and consumers of each kind."""

    directory: Path
    urls: list[str]
    queues: list[str]
    queue_type: str = "quorum"
    publishers: int = 2  # of each kind
    consumers: int = 1  # of each kind
    kinds: tuple[str, ...] = ("pika", "node")
    max_per_publisher: int | None = None
    rate: float = 0.0  # pika publishes a second (0: as fast as confirms come)
    idle: float = 3.0
    drain_timeout: float = 60.0
    clients: list[LoadClient] = field(default_factory=list)
    faults: Recorder | None = None

    @property
    def history_dir(self) -> Path:
        return self.directory / "history"

    def start(self) -> Load:
        self.history_dir.mkdir(parents=True, exist_ok=True)
        self.faults = Recorder(self.history_dir / "faults.jsonl", "harness", flush_every=1)
        kinds = [kind for kind in self.kinds if kind != "node" or node_available()]
        # Publishers start on the first node, consumers on the second, each next client on the next node:
        # every node has clients of both roles (when there are enough), and a message crosses nodes.
        offsets = {"publisher": 0, "consumer": 1}
        for kind in kinds:
            for role, count in (("consumer", self.consumers), ("publisher", self.publishers)):
                for index in range(count):
                    first = offsets[role] % len(self.urls)
                    offsets[role] += 1
                    urls = self.urls[first:] + self.urls[:first]
                    self._spawn(kind, role, f"{kind}-{role[0]}{index + 1}", urls)
        return self

    def _spawn(self, kind: str, role: str, name: str, urls: list[str]) -> None:
        out = self.history_dir / f"{name}.jsonl"
        log_path = self.directory / f"{name}.log"
        if kind == "pika":
            command = [sys.executable, "-m", "interop.checker.pika_load", role, "--name", name]
            command += ["--out", str(out)]
            command += [arg for url in urls for arg in ("--url", url)]
            command += [arg for queue in self.queues for arg in ("--queue", queue)]
            command += ["--queue-type", self.queue_type, "--idle", str(self.idle)]
            command += ["--drain-timeout", str(self.drain_timeout), "--rate", str(self.rate)]
            if self.max_per_publisher is not None:
                command += ["--max", str(self.max_per_publisher)]
        else:
            options = {
                "role": role,
                "name": name,
                "out": str(out),
                "urls": urls,
                "queues": self.queues,
                "queueType": self.queue_type,
                "max": self.max_per_publisher,
                "idle": self.idle,
                "drainTimeout": self.drain_timeout,
            }
            command = ["node", str(NODE_DIR / "load_client.js"), json.dumps(options)]
        with log_path.open("ab") as log:
            process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        self.clients.append(LoadClient(name, role, process, log_path))

    def fault(self, kind: str, target: str, **details: object) -> None:
        """Records a fault in the history (the harness's own file)."""
        assert self.faults is not None
        self.faults.record("fault", kind=kind, target=target, **details)

    def failover(self, queue: str, seen: tuple[str, float]) -> None:
        """Records that `queue`'s leadership moved (`FaultCluster.wait_failover`: the new leader, and the
        time since when it may have)."""
        assert self.faults is not None
        leader, since = seen
        self.faults.record("failover", queue=queue, leader=leader, since=since)

    def confirmed_so_far(self) -> int:
        """Confirms in the history files as flushed so far (pika clients flush every 200 events)."""
        total = 0
        for path in self.history_dir.glob("*.jsonl"):
            with path.open(encoding="utf-8", errors="replace") as file:
                total += sum(1 for line in file if '"outcome":"ack"' in line or '"outcome": "ack"' in line)
        return total

    def wait_confirmed(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.confirmed_so_far() < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"fewer than {count} confirms after {timeout} s: {self.logs()}")
            self.check_alive()
            time.sleep(0.2)

    def check_alive(self) -> None:
        for client in self.clients:
            code = client.process.poll()
            if code not in (None, 0):
                raise AssertionError(f"{client.name} exited {code}: {client.log_path.read_text()[-2000:]}")

    def finish(self, publish_timeout: float = 30.0) -> Verdict:
        """Stops the publishers, then drains the consumers, and gives the verdict on the whole history."""
        for role in ("publisher", "consumer"):
            group = [client for client in self.clients if client.role == role]
            for client in group:
                if client.process.poll() is None:
                    client.process.send_signal(signal.SIGTERM)
            timeout = publish_timeout if role == "publisher" else self.drain_timeout + 30
            for client in group:
                try:
                    client.process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    client.process.kill()
                    client.process.wait()
        if self.faults is not None:
            self.faults.close()
        return check(read_directory(self.history_dir))

    def stop(self) -> None:
        """Kills whatever is still running (after a failed test)."""
        for client in self.clients:
            if client.process.poll() is None:
                client.process.kill()
                client.process.wait()
        if self.faults is not None:
            self.faults.close()

    def logs(self) -> str:
        return "\n".join(f"{c.name}: {c.log_path.read_text()[-500:]}" for c in self.clients)
