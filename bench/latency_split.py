"""Split each message's latency into the broker's loop at work and the time outside it.

    python -m bench.latency --instrument --brokers leveret --dump /tmp/lat
    python -m bench.latency_split /tmp/lat

Reads the per-message record of each Leveret run (send time and latency, CLOCK_MONOTONIC) and the loop
record bench.loopstats wrote (every loop batch: from an I/O wait's end to the next one's start), and for each
message puts its time, from its send to its delivery, in three parts:
- before: until the loop's first batch after the send began (the producer's write, the kernel's wake-up of
  the broker's thread and the wait for a CPU; or a loop still busy with an earlier batch);
- loop: the part of the message's life in which the loop ran batches (its handling of this message, and
  whatever else it ran meanwhile: other messages, acks, timers, a commit's completion);
- after: the rest (the loop idle in epoll while the delivery crosses the kernel to the consumer and the
  consumer's process wakes and reads it).
Printed per run: the latency percentiles, and the mean split of all messages and of the slowest 1% and 0.1%.
"""

from __future__ import annotations

import bisect
import json
import sys
from pathlib import Path

from bench.latency import percentile


def split(sent_ms: list[float], latency_us: list[float],
          batches: list[float]) -> list[tuple[float, float, float]]:
    """(before, loop, after) in µs for each message; `batches` is start, length, start, length, ... (s)."""
    starts = batches[0::2]
    lengths = batches[1::2]
    parts = []
    for sent_at, latency in zip(sent_ms, latency_us, strict=True):
        sent = sent_at / 1000
        delivered = sent + latency / 1e6
        i = bisect.bisect_left(starts, sent)
        # A batch already running at the send counts from the send on.
        if i > 0 and starts[i - 1] + lengths[i - 1] > sent:
            i -= 1
        first = max(starts[i], sent) if i < len(starts) else delivered
        before = min(first, delivered) - sent
        busy = 0.0
        j = i
        while j < len(starts) and starts[j] < delivered:
            busy += min(starts[j] + lengths[j], delivered) - max(starts[j], sent)
            j += 1
        parts.append((before * 1e6, busy * 1e6, max(0.0, latency - before * 1e6 - busy * 1e6)))
    return parts


def describe(name: str, run: dict, batches: list[float]) -> str:
    latency = run["latency_us"]
    parts = split(run["sent_ms"], latency, batches)
    ordered = sorted(range(len(latency)), key=latency.__getitem__)
    values = [latency[i] for i in ordered]
    lines = [f"{name}: p50 {percentile(values, 50):.0f}, p99 {percentile(values, 99):.0f}, "
             f"p99.9 {percentile(values, 99.9):.0f} µs"]
    for label, share in (("all", 1.0), ("slowest 1%", 0.01), ("slowest 0.1%", 0.001)):
        chosen = ordered[-max(1, round(len(ordered) * share)):]
        means = [sum(parts[i][k] for i in chosen) / len(chosen) for k in range(3)]
        total = sum(means) or 1.0
        lines.append(f"  {label:>12}: mean {total:.0f} µs = before {means[0]:.0f} ({means[0] / total:.0%}), "
                     f"loop {means[1]:.0f} ({means[1] / total:.0%}), after {means[2]:.0f} "
                     f"({means[2] / total:.0%})")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    directory = Path(argv[0])
    stats = directory / "loopstats.json"
    if not stats.exists():
        print(f"{stats} is missing: record with `python -m bench.latency --instrument --dump {directory}`",
              file=sys.stderr)
        return 2
    record = json.loads(stats.read_text())
    batches = record["all_batches"]
    for path in sorted(directory.glob("*-leveret-*.json")):
        print(describe(path.stem, json.loads(path.read_text()), batches))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
