"""Append + group-commit N persistent messages to one queue log, then time a restart's recovery of them:
the index the broker reads at start, and (for comparison) every message read back whole.

    python bench/store_recovery.py [--count 1000000] [--body 256] [--batch 1000] [--dir PATH]

Recovery runs in a fresh process, like a restart; the page cache is warm unless you drop it in between
(`--drop-caches`, needs root: `sync; echo 3 > /proc/sys/vm/drop_caches`).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

from leveret.broker.store import Store

PROPERTIES = b"\x10\x00\x02"  # property flags: delivery_mode present; delivery_mode 2


def write(directory: str, count: int, body_size: int, batch_size: int) -> None:
    store = Store(directory)
    log = store.open_queue("/", "bench")
    log.recover()
    body = os.urandom(body_size)
    started, cpu = time.perf_counter(), time.process_time()
    for seq in range(1, count + 1):
        log.append_enqueue(seq, "amq.direct", "bench", PROPERTIES, body)
        if seq % batch_size == 0 or seq == count:
            batch = store.begin_sync()
            batch.run()
            store.complete(batch)
            assert batch.error is None
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    size = sum(entry.stat().st_size for entry in os.scandir(log.directory))
    print(f"append+sync {count} x {body_size} B in batches of {batch_size}: "
          f"{elapsed:.2f} s wall, {cpu:.2f} s CPU ({count / elapsed:,.0f} msg/s, "
          f"{elapsed / count * 1e6:.2f} us each), "
          f"{size / 2**20:.0f} MiB on disk")


def recover(directory: str, whole: bool) -> None:
    """`whole`: every message read back with its body (QueueLog.recover); else the index the broker reads
    at start (QueueLog.recover_index: no bodies; broker/recovery.py reads back only a budget's worth)."""
    started, cpu = time.perf_counter(), time.process_time()
    store = Store(directory)
    log = store.open_queue("/", "bench")
    count = len(log.recover() if whole else log.recover_index())
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    each = elapsed / max(count, 1) * 1e6
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    what = "index and bodies" if whole else "index only"
    print(f"recover {count} messages ({what}): {elapsed:.2f} s wall, {cpu:.2f} s CPU ({each:.2f} us each), "
          f"peak RSS {rss:.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--body", type=int, default=256)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--dir", help="store directory (default: a temporary one, removed afterwards)")
    parser.add_argument("--drop-caches", action="store_true", help="drop the page cache before recovering")
    parser.add_argument("--recover-only", choices=("index", "whole"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.recover_only:
        recover(args.dir, args.recover_only == "whole")
        return
    directory = args.dir or tempfile.mkdtemp(prefix="leveret-bench-")
    try:
        write(directory, args.count, args.body, args.batch)
        if args.drop_caches:
            subprocess.run(["sync"], check=True)
            with open("/proc/sys/vm/drop_caches", "w") as file:
                file.write("3\n")
        for what in ("index", "whole"):
            subprocess.run([sys.executable, __file__, "--recover-only", what, "--dir", directory], check=True)
    finally:
        if not args.dir:
            shutil.rmtree(directory)


if __name__ == "__main__":
    main()
