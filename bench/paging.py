"""Queues larger than memory: a backlog published into one queue, then drained, on a Leveret with a small
message memory budget (paged) and with its default budget (all in memory), alternating.

    python -m bench.paging                          # 1,000,000 x 1 KiB, budgets 8MiB and the default
    python -m bench.paging --count 200000 --repeat 3
    python -m bench.paging --persistent             # persistent messages on a durable queue
    python -m bench.paging --budgets 8MiB,64MiB     # any budgets; "default" is the default one

Publishing is one Python connection sending pre-framed publishes without confirms (interop/rawclient.py);
draining is one consumer, prefetch 1000, acking every 100. Per phase: wall-clock rate, the broker's CPU
per message (/proc/PID/stat), its peak RSS (/proc/PID/status VmRSS); the RSS with all of it queued; and
the longest wait between two deliveries while draining (a stall, if read-ahead fell behind).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from interop.backlog import MIB, Backlog, BudgetedLeveret, run_backlog


def one_run(budget: str | None, count: int, size: int, persistent: bool) -> Backlog:
    with tempfile.TemporaryDirectory(prefix="leveret-paging-") as workdir:
        broker = BudgetedLeveret(Path(workdir), budget)
        broker.start()
        try:
            return run_backlog(broker, count, size, persistent=persistent)
        finally:
            broker.close()


def row(budget: str, backlog: Backlog) -> str:
    count = backlog.count
    return (
        f"| {budget} | {backlog.idle_rss / MIB:.0f} | {backlog.publish.peak_rss / MIB:.0f} "
        f"| {backlog.queued_rss / MIB:.0f} | {backlog.drain.peak_rss / MIB:.0f} "
        f"| {backlog.publish.rate(count):,.0f} | {backlog.publish.cpu_us(count):.1f} "
        f"| {backlog.drain.rate(count):,.0f} | {backlog.drain.cpu_us(count):.1f} "
        f"| {backlog.longest_gap * 1000:.0f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--budgets", default="8MiB,default")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--persistent", action="store_true")
    args = parser.parse_args()
    budgets = args.budgets.split(",")
    kind = "persistent, durable queue" if args.persistent else "transient"
    print(f"{args.count:,} x {args.size} B, {kind}; nproc {os.cpu_count()}\n")
    print(
        "| budget | idle RSS MiB | peak RSS publishing | RSS queued | peak RSS draining | publish msg/s "
        "| publish µs CPU/msg | drain msg/s | drain µs CPU/msg | longest wait ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for _ in range(args.repeat):
        for budget in budgets:
            backlog = one_run(None if budget == "default" else budget, args.count, args.size, args.persistent)
            print(row(budget, backlog), flush=True)


if __name__ == "__main__":
    main()
