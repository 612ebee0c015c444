"""bench.loopstats' CPU-time record: a loop batch that burns the loop thread's CPU is listed with the task and
the collection that ran in it, whatever the wall clock says, and every batch and collection is counted in the
CPU histograms that `bench.latency --instrument` summarises."""

from __future__ import annotations

import gc
import time

import trio
import trio.lowlevel

from bench.loopstats import CPU_NOTE, LoopStats, summary


def _burn(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_a_batch_that_burns_cpu_is_listed_with_its_task_and_collection() -> None:
    stats = LoopStats()
    gc.callbacks.append(stats.on_gc)

    async def busy_once() -> None:
        await trio.sleep(0.01)  # an I/O wait first: the burn is a batch of its own
        gc.collect(0)
        _burn(CPU_NOTE * 3)

    async def main() -> None:
        trio.lowlevel.add_instrument(stats)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(busy_once, name="busy_once")
                for _ in range(20):
                    await trio.sleep(0.001)  # short idle batches around it
        finally:
            trio.lowlevel.remove_instrument(stats)

    try:
        trio.run(main)
    finally:
        gc.callbacks.remove(stats.on_gc)
    record = stats.dump()
    long_ones = [batch for batch in record["cpu_batches"] if "busy_once" in batch[3]]
    assert len(long_ones) == 1
    _start, wall, cpu, tasks = long_ones[0]
    assert cpu >= CPU_NOTE * 3 and wall >= cpu * 0.5
    assert "gc0" in tasks
    assert sum(count for _bucket, count in record["batch_cpu_hist_10us"]) >= 20
    assert sum(count for _bucket, count in record["gc_cpu_hist_10us"]) >= 1
    text = summary(record, 1.0)
    assert "batches over 200 µs of CPU" in text and "busy_once" in text
