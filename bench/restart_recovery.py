"""A restart of Leveret holding a durable backlog: how long until it serves, how much memory it takes, and
whether every message then drains. The backlog is published by the C load generator (persistent, confirmed,
to a durable queue), the broker stopped with SIGTERM and started again, with the message memory budget given.

    python -m bench.restart_recovery [--count 1000000] [--body 1024] [--budget 64MB]

Prints the time from start to accepting AMQP, the broker's peak RSS (VmHWM) then, and after the drain.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench import loadgen
from bench.toolchain import build_loadgen
from interop.brokers import LeveretBroker


def peak_rss_mib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError("no VmHWM in /proc/PID/status")


class BudgetedLeveret(LeveretBroker):
    """Leveret on an existing work directory (and so its data), with a message memory budget."""

    def __init__(self, workdir: Path, budget: str) -> None:
        super().__init__(workdir)
        self.budget = budget

    def command(self) -> list[str]:
        config = self.workdir / "budget.yaml"
        config.write_text(f"resources:\n  message_memory_budget: '{self.budget}'\n")
        return [*super().command(), "--config", str(config)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--body", type=int, default=1024)
    parser.add_argument("--budget", default="64MB", help="resources.message_memory_budget for the restart")
    args = parser.parse_args()
    binary = build_loadgen()
    with tempfile.TemporaryDirectory(prefix="leveret-restart-") as work:
        first = LeveretBroker(Path(work))
        try:
            first.start()
            publish = ["--mode", "produce", "--persistent", "--durable", "--confirm", "1000", "--body",
                       str(args.body), "--count", str(args.count), "--queue", "backlog", "--duration", "600"]
            loadgen.run(binary, first.port, publish, 600)
        finally:
            first.close()
        broker = BudgetedLeveret(Path(work), args.budget)
        try:
            started = time.monotonic()
            broker.start()
            serving = time.monotonic() - started
            at_start = peak_rss_mib(broker.pid)
            drain = ["--mode", "consume", "--durable", "--prefetch", "1000", "--ack-every", "100",
                     "--count", str(args.count), "--queue", "backlog", "--duration", "600"]
            result = loadgen.run(binary, broker.port, drain, 600)
            print(f"{args.count} x {args.body} B persistent, budget {args.budget}: serving {serving:.1f} s "
                  f"after start, peak RSS {at_start} MiB; drained {result['delivered']} in "
                  f"{result['elapsed']:.1f} s, peak RSS {peak_rss_mib(broker.pid)} MiB")
        finally:
            broker.close()


if __name__ == "__main__":
    main()
