"""Leveret with its event loop and garbage collector watched: where a slow message's time went.

    LOOPSTATS=/tmp/stats.json python -m bench.loopstats --port 5672 --data-dir /tmp/d   # leveret's options

Runs the broker as `python -m leveret` would, with a trio instrument and a gc callback, and writes on exit
(SIGTERM) a JSON file of what took the loop away from its sockets, each with its CLOCK_MONOTONIC start (the
clock the latency harness stamps bodies with, so slow messages can be matched to them):
- every garbage collection (generation, duration);
- every task step longer than STEP_NOTE (the task's name, duration, and the loop thread's CPU time in it:
  far less means the thread waited, for a CPU or for the GIL);
- every stretch between two I/O waits longer than STEP_NOTE (the loop busy running tasks);
- scheduling delay: from a task being rescheduled to its step starting, its distribution and the long ones;
- every loop batch (start, length): the broker's own time per wake-up, from an I/O wait's end to the next
  one's start, to set against each message's latency (`bench.latency_split` splits it with them);
- the loop thread's CPU time (time.thread_time) in every batch and every collection, as histograms, and each
  batch over CPU_NOTE of it with the tasks and collections run in it: figures a loaded machine disturbs far
  less than wall times, to find and compare the broker's own long wake-ups.
`bench.latency --instrument` starts Leveret this way and prints the summary next to the slowest messages.
"""

from __future__ import annotations

import gc
import json
import os
import time
from collections import Counter
from typing import Any

import trio
import trio.lowlevel

import leveret.broker.cli as cli
from leveret.broker.server.main import run_node

STEP_NOTE = 0.0005  # seconds: shorter task steps and loop batches are only counted
CPU_NOTE = 0.0002  # seconds of the loop thread's CPU: a batch this long is listed with what ran in it


class LoopStats(trio.abc.Instrument):
    def __init__(self) -> None:
        # start, duration, the loop thread's CPU time in it (much less: the thread waited for a CPU or
        # for the GIL), task name
        self.steps: list[tuple[float, float, float, str]] = []
        self.batches: list[tuple[float, float]] = []  # from an I/O wait's end to the next one's start
        self.delays: list[tuple[float, float, str]] = []  # rescheduled, delay to its step, task name
        self.delay_counts: Counter[int] = Counter()  # delay in 0.1 ms buckets
        self.gcs: list[tuple[float, float, int, int]] = []  # start, duration, generation, collected
        self.batch_counts: Counter[int] = Counter()  # every batch's length in 10 µs buckets
        self.all_batches: list[float] = []  # every batch as start, length, start, length, ...
        self.batch_cpu_counts: Counter[int] = Counter()  # every batch's loop-thread CPU time, 10 µs buckets
        # batches whose loop-thread CPU time is over CPU_NOTE: start, length, CPU, the tasks stepped in them
        # and the collections run in them: what a long wake-up was made of, whatever the machine's load
        self.cpu_batches: list[tuple[float, float, float, list[str]]] = []
        self.gc_cpu_counts: Counter[int] = Counter()  # every collection's CPU time, 10 µs buckets
        self._step_start = time.monotonic()
        self._step_cpu = time.thread_time()
        self._io_done = time.monotonic()
        self._io_done_cpu = time.thread_time()
        self._batch_tasks: list[str] = []
        self._scheduled: dict[trio.lowlevel.Task, float] = {}
        self._gc_start = 0.0
        self._gc_start_cpu = 0.0

    def task_scheduled(self, task: trio.lowlevel.Task) -> None:
        self._scheduled[task] = time.monotonic()

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        now = self._step_start = time.monotonic()
        self._step_cpu = time.thread_time()
        scheduled = self._scheduled.pop(task, None)
        if scheduled is not None:
            delay = now - scheduled
            self.delay_counts[int(delay * 10_000)] += 1
            if delay > STEP_NOTE:
                self.delays.append((scheduled, delay, task.name))

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        duration = time.monotonic() - self._step_start
        self._batch_tasks.append(task.name.rsplit(".", 1)[-1])
        if duration > STEP_NOTE:
            self.steps.append((self._step_start, duration, time.thread_time() - self._step_cpu, task.name))

    def before_io_wait(self, timeout: float) -> None:
        duration = time.monotonic() - self._io_done
        cpu = time.thread_time() - self._io_done_cpu
        self.batch_cpu_counts[int(cpu * 100_000)] += 1
        if cpu > CPU_NOTE:
            self.cpu_batches.append((self._io_done, duration, cpu, self._batch_tasks))
        self.batch_counts[int(duration * 100_000)] += 1
        self.all_batches += (self._io_done, duration)
        if duration > STEP_NOTE:
            self.batches.append((self._io_done, duration))

    def after_io_wait(self, timeout: float) -> None:
        self._io_done = time.monotonic()
        self._io_done_cpu = time.thread_time()
        self._batch_tasks = []

    def on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_start = time.monotonic()
            self._gc_start_cpu = time.thread_time()
        else:
            self.gc_cpu_counts[int((time.thread_time() - self._gc_start_cpu) * 100_000)] += 1
            self._batch_tasks.append(f"gc{info['generation']}")
            self.gcs.append((self._gc_start, time.monotonic() - self._gc_start, info["generation"],
                             info["collected"]))

    def dump(self) -> dict[str, Any]:
        return {"steps": self.steps, "batches": self.batches, "delays": self.delays, "gcs": self.gcs,
                "delay_hist_100us": sorted(self.delay_counts.items()),
                "batch_hist_10us": sorted(self.batch_counts.items()), "all_batches": self.all_batches,
                "gc_threshold": gc.get_threshold(),
                "batch_cpu_hist_10us": sorted(self.batch_cpu_counts.items()), "cpu_batches": self.cpu_batches,
                "gc_cpu_hist_10us": sorted(self.gc_cpu_counts.items())}


def _histogram_marks(hist: list[tuple[int, int]], width_ms: float) -> tuple[int, dict[float, float]]:
    """The count, and the upper edge (ms) of the bucket holding p50, p99 and p99.9, of a bucketed record."""
    counts = sorted((bucket, count) for bucket, count in hist)
    total = sum(count for _bucket, count in counts)
    seen = 0
    marks: dict[float, float] = {}
    for bucket, count in counts:
        seen += count
        for pct in (50.0, 99.0, 99.9):
            if pct not in marks and seen >= total * pct / 100:
                marks[pct] = (bucket + 1) * width_ms
    return total, marks


def summary(record: dict[str, Any], seconds: float) -> str:
    """What the record holds, in a few lines: collections, long task steps, scheduling delay."""
    lines = []
    for generation in (0, 1, 2):
        pauses = [gc_[1] for gc_ in record["gcs"] if gc_[2] == generation]
        longest = max(pauses, default=0.0) * 1000
        lines.append(f"gc gen{generation}: {len(pauses)} collections, {sum(pauses) * 1000:.1f} ms in all, "
                     f"longest {longest:.2f} ms")
    by_task: dict[str, list[tuple[float, float]]] = {}
    for _start, duration, cpu, name in record["steps"]:
        by_task.setdefault(name.rsplit(".", 1)[-1], []).append((duration, cpu))
    for name, steps in sorted(by_task.items(), key=lambda item: -sum(d for d, _c in item[1])):
        wall = sum(d for d, _c in steps) * 1000
        cpu = sum(c for _d, c in steps) * 1000
        lines.append(f"task steps over {STEP_NOTE * 1000:g} ms, {name}: {len(steps)}, {wall:.0f} ms in all "
                     f"({cpu:.0f} ms of it on a CPU), longest {max(d for d, _c in steps) * 1000:.1f} ms")
    total, marks = _histogram_marks(record["delay_hist_100us"], 0.1)
    lines.append(f"scheduling delay (rescheduled to running), {total} steps: "
                 + ", ".join(f"p{pct:g} <{value:.1f} ms" for pct, value in marks.items()))
    total, marks = _histogram_marks(record.get("batch_hist_10us", []), 0.01)
    lines.append(f"loop batches (I/O wait to I/O wait), {total}: "
                 + ", ".join(f"p{pct:g} <{value:.2f} ms" for pct, value in marks.items()))
    total, marks = _histogram_marks(record.get("batch_cpu_hist_10us", []), 0.01)
    lines.append(f"loop batches' CPU time, {total}: "
                 + ", ".join(f"p{pct:g} <{value:.2f} ms" for pct, value in marks.items()))
    long_cpu = record.get("cpu_batches", [])
    lines.append(f"batches over {CPU_NOTE * 1e6:.0f} µs of CPU: {len(long_cpu)}, "
                 f"{sum(b[2] for b in long_cpu) * 1000:.1f} ms of CPU in all")
    made_of = Counter(name for batch in long_cpu for name in sorted(set(batch[3])))
    lines.append("  tasks in them: " + ", ".join(f"{name} {count}" for name, count in made_of.most_common(8)))
    total, marks = _histogram_marks(record.get("gc_cpu_hist_10us", []), 0.01)
    lines.append(f"collections' CPU time, {total}: "
                 + ", ".join(f"p{pct:g} <{value:.2f} ms" for pct, value in marks.items()))
    lines.append(f"over {seconds:.0f} s of record")
    return "\n".join(lines)


def main() -> None:
    stats = LoopStats()
    gc.callbacks.append(stats.on_gc)

    async def watched(config: Any) -> None:
        trio.lowlevel.add_instrument(stats)
        try:
            await run_node(config)
        finally:
            trio.lowlevel.remove_instrument(stats)
            path = os.environ.get("LOOPSTATS")
            if path:
                with open(path, "w") as file:
                    json.dump(stats.dump(), file)

    cli.run_node = watched
    cli.main()


if __name__ == "__main__":
    main()
