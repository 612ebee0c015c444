"""A backlog against a real broker process: publish N numbered messages into one queue, then drain it in
order, watching the broker's resident memory (VmRSS) and CPU time. Shared by the paging tests
(interop/test_paging_backlog.py) and their benchmark (bench/paging.py)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

from bench.procfs import cpu_seconds
from interop.brokers import LeveretBroker
from interop.rawclient import RawClient

MIB = 1024 * 1024


class BudgetedLeveret(LeveretBroker):
    """Leveret with `resources.message_memory_budget` set (None: its default)."""

    def __init__(self, workdir: Path, budget: str | None) -> None:
        super().__init__(workdir)
        self.budget = budget

    def command(self) -> list[str]:
        command = super().command()
        if self.budget is not None:
            config = self.workdir / "budget.yaml"
            config.write_text(f"resources:\n  message_memory_budget: '{self.budget}'\n")
            command += ["--config", str(config)]
        return command

    @property
    def page_files(self) -> list[Path]:
        return sorted((self.data_dir / "pages").glob("*.seg"))


def vm_rss(pid: int) -> int:
    """Resident set size in bytes, as /proc/PID/status reports it."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise ValueError(f"no VmRSS for {pid}")


class PeakRss(threading.Thread):
    """Samples a process's RSS every `interval` seconds until stopped; `peak` is the highest seen."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, vm_rss(self.pid))
            self._done.wait(self.interval)

    def stop(self) -> int:
        self._done.set()
        self.join()
        self.peak = max(self.peak, vm_rss(self.pid))
        return self.peak


@dataclass
class Phase:
    seconds: float
    cpu_seconds: float  # the broker's, user + system, all threads
    peak_rss: int

    def rate(self, count: int) -> float:
        return count / self.seconds

    def cpu_us(self, count: int) -> float:
        return self.cpu_seconds / count * 1e6


@dataclass
class Backlog:
    count: int
    size: int
    idle_rss: int
    publish: Phase
    queued_rss: int  # with the whole backlog queued
    drain: Phase
    longest_gap: float  # seconds between two deliveries while draining, at most


def _phase(broker: LeveretBroker, work: callable) -> Phase:  # type: ignore[valid-type]
    watcher = PeakRss(broker.pid)
    watcher.start()
    started, cpu = time.perf_counter(), cpu_seconds(broker.pid)
    work()
    seconds, used = time.perf_counter() - started, cpu_seconds(broker.pid) - cpu
    return Phase(seconds, used, watcher.stop())


def run_backlog(
    broker: LeveretBroker, count: int, size: int, *, queue: str = "backlog", persistent: bool = False
) -> Backlog:
    """Publish `count` messages of `size` bytes (no consumer), then drain them; AssertionError unless
    every one comes back once, in order, not redelivered."""
    client = RawClient(broker.host, broker.port)
    try:
        client.declare(queue, durable=persistent)
        idle = vm_rss(broker.pid)

        def publish() -> None:
            client.publish(queue, range(count), size, persistent=persistent)
            while client.declare(queue, passive=True) < count:  # until the broker has taken them all
                time.sleep(0.05)

        published = _phase(broker, publish)
        queued = vm_rss(broker.pid)

        longest = 0.0

        def drain() -> None:
            nonlocal longest
            expected = 0
            last = time.perf_counter()
            for number, redelivered in client.consume(queue):
                assert (number, redelivered) == (expected, False), f"got {number} after {expected - 1}"
                now = time.perf_counter()
                if expected:
                    longest = max(longest, now - last)
                last = now
                expected += 1
                if expected == count:
                    return

        drained = _phase(broker, drain)
        return Backlog(count, size, idle, published, queued, drained, longest)
    finally:
        client.close()
