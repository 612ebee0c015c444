"""A leader's appends in flight to one follower (broker/cluster/pipeline.py): several batches at once, the
truncation carried by the first only, replies taken in any order."""

from __future__ import annotations

import pytest

from leveret.broker.cluster.pipeline import AppendPipeline


def test_batches_follow_each_other_and_only_the_first_truncates() -> None:
    pipe = AppendPipeline(start=10, truncate=10, depth=3)
    assert pipe.send(4) == (10, 10)
    assert pipe.send(2) == (14, -1)
    assert pipe.send(1) == (16, -1)
    assert pipe.next == 17 and pipe.in_flight == 3 and pipe.full()


def test_replies_out_of_order_only_move_the_durable_end_forward() -> None:
    pipe = AppendPipeline(start=0, truncate=-1, depth=4)
    for count in (3, 3, 3):
        pipe.send(count)
    # The last batch's reply comes first (its fsync covered the earlier ones too): all three are done.
    assert pipe.acknowledged(9) and pipe.durable == 9 and pipe.in_flight == 0
    # The earlier replies arrive late: they change nothing.
    assert not pipe.acknowledged(3) and not pipe.acknowledged(6)
    assert pipe.durable == 9 and pipe.in_flight == 0


def test_a_reply_frees_the_slots_of_every_batch_below_its_end() -> None:
    pipe = AppendPipeline(start=0, truncate=-1, depth=2)
    pipe.send(5)
    pipe.send(5)
    assert pipe.full()
    assert pipe.acknowledged(5) and pipe.in_flight == 1 and not pipe.full()
    pipe.send(1)
    assert pipe.acknowledged(11) and pipe.in_flight == 0


def test_an_empty_append_learns_the_end_of_a_follower_in_step() -> None:
    pipe = AppendPipeline(start=0, truncate=-1)
    assert pipe.send(0) == (0, -1)
    assert not pipe.acknowledged(0)  # nothing new is durable, but the slot is free
    assert pipe.in_flight == 0 and pipe.durable == 0


def test_a_reply_beyond_what_was_sent_is_refused() -> None:
    pipe = AppendPipeline(start=0, truncate=-1)
    pipe.send(2)
    with pytest.raises(ValueError, match="beyond what was sent"):
        pipe.acknowledged(3)


def test_small_appends_wait_for_the_reply_and_a_backlog_streams() -> None:
    pipe = AppendPipeline(start=0, truncate=-1, depth=3, min_batch=100)
    assert not pipe.may_send(0)  # nothing to send
    assert pipe.may_send(2)  # nothing in flight: even a small batch goes at once
    pipe.send(2)
    assert not pipe.may_send(50)  # one unanswered: 48 waiting entries wait for its reply
    assert pipe.may_send(102)  # a backlog of 100 goes without waiting
    pipe.send(100)
    pipe.send(100)
    assert pipe.full() and not pipe.may_send(1000)
    assert pipe.acknowledged(202) and pipe.may_send(203)


def test_the_first_batch_after_a_probe_goes_even_empty_to_carry_the_truncation() -> None:
    pipe = AppendPipeline(start=7, truncate=7)
    assert pipe.may_send(7)
    assert pipe.send(0) == (7, 7)
    assert not pipe.may_send(7)
