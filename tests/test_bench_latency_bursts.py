"""bench.latency_bursts: sends a few µs apart are one burst (its first, then the later ones), the rest alone,
and the summary says which kind the slowest messages were."""

from __future__ import annotations

from bench.latency_bursts import describe, kinds


def test_sends_closer_than_the_gap_make_a_burst_whatever_their_order() -> None:
    sent = [3.0, 0.0, 1.0, 1.02, 1.05, 2.2]  # ms; the dump lists sends in arrival order, not send order
    assert kinds(sent) == ["alone", "alone", "first", "later", "later", "alone"]


def test_the_summary_names_the_kind_the_slowest_messages_were() -> None:
    alone = [float(i) for i in range(297)]
    bursts = [at + step for at in (300.0, 302.0, 304.0) for step in (0.0, 0.02)]
    latency = [100.0] * 297 + [150.0, 5000.0] * 3  # each burst's later message is slow
    lines = describe("run", alone + bursts, latency).splitlines()
    assert "100% of the slowest 1%" in next(line for line in lines if "later" in line)
    assert "0% of the slowest 1%" in next(line for line in lines if "alone" in line)
