"""How the latency harness's producer paced its sends, and which sends made the tail, for every broker.

    python -m bench.latency --dump /tmp/lat          # any run, both brokers
    python -m bench.latency_bursts /tmp/lat

bench.latency's node producer sleeps with setTimeout, whose whole milliseconds fire late, and then sends
every message due at once: some messages leave in bursts, a few µs apart, and reach the broker in one
segment. Each message of a run is put in one of three kinds by its send time: *alone* (no other send
within GAP_MS either side), *first* of a burst, or *later* in one. Printed per run: how many of each, the
p50 and p99 of each kind, and what share of the slowest 1% each kind is. A broker whose tail is made of
later-in-burst messages spends its p99 handling bursts (the messages before them in the same segment and
their deliveries), not on stalls of its own.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

from bench.latency import percentile

GAP_MS = 0.1  # sends closer than this are one burst
KINDS = ("alone", "first", "later")


def kinds(sent_ms: list[float]) -> list[str]:
    """Each send's kind, in the order given (any order: the kinds follow the send times)."""
    order = sorted(range(len(sent_ms)), key=sent_ms.__getitem__)
    result = [""] * len(sent_ms)
    for rank, index in enumerate(order):
        after_one = rank > 0 and sent_ms[index] - sent_ms[order[rank - 1]] < GAP_MS
        before_one = rank + 1 < len(order) and sent_ms[order[rank + 1]] - sent_ms[index] < GAP_MS
        result[index] = "later" if after_one else "first" if before_one else "alone"
    return result


def describe(name: str, sent_ms: list[float], latency_us: list[float]) -> str:
    kind = kinds(sent_ms)
    ordered = sorted(range(len(latency_us)), key=latency_us.__getitem__)
    slowest = Counter(kind[i] for i in ordered[-max(1, round(len(ordered) / 100)):])
    share = sum(slowest.values())
    lines = [f"{name}: {len(latency_us)} messages"]
    for label in KINDS:
        values = sorted(latency_us[i] for i in range(len(kind)) if kind[i] == label)
        if not values:
            lines.append(f"  {label:>5}: none")
            continue
        lines.append(f"  {label:>5}: {len(values) / len(kind):4.0%} of sends, "
                     f"p50 {percentile(values, 50):.0f} µs, p99 {percentile(values, 99):.0f} µs, "
                     f"{slowest[label] / share:4.0%} of the slowest 1%")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    runs = sorted(path for path in Path(argv[0]).glob("*.json") if path.name != "loopstats.json")
    if not runs:
        print(f"no runs in {argv[0]}: record with `python -m bench.latency --dump {argv[0]}`",
              file=sys.stderr)
        return 2
    for path in runs:
        run = json.loads(path.read_text())
        skip = int(run["rate"] * 1.0)  # bench.latency's default warm-up second
        kept = [(sent, lat)
                for seq, sent, lat in zip(run["seq"], run["sent_ms"], run["latency_us"], strict=True)
                if seq >= skip]
        print(describe(path.stem, [sent for sent, _ in kept], [lat for _, lat in kept]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
