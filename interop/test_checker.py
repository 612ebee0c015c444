"""The history checker on hand-made histories: each promise it checks, kept and broken."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from interop.checker.history import Event, Recorder, message_id, read_directory
from interop.checker.verdict import check


class Script:
    """A history written by hand, one event per call, at increasing times."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def add(self, op: str, **fields: Any) -> Script:
        self.events.append({"op": op, "t": float(len(self.events)), "client": "test", **fields})
        return self

    def publish(self, publisher: str, seq: int, outcome: str = "ack", queue: str | None = "q") -> str:
        identifier = message_id(publisher, seq)
        self.add("publish", id=identifier, publisher=publisher, seq=seq, queue=queue)
        self.add("confirm", id=identifier, outcome=outcome)
        return identifier

    def deliver(
        self, identifier: str, queue: str = "q", consumer: str = "c1", redelivered: bool = False
    ) -> None:
        self.add(
            "deliver", id=identifier, queue=queue, consumer=consumer, redelivered=redelivered, channel="ch1"
        )

    def ack(self, identifier: str, queue: str = "q", channel: str = "ch1") -> None:
        self.add("ack", id=identifier, queue=queue, channel=channel)


def test_a_clean_history_passes() -> None:
    script = Script()
    ids = [script.publish("p1", seq) for seq in range(5)]
    for identifier in ids:
        script.deliver(identifier)
        script.ack(identifier)
    script.add("settled", channel="ch1")
    verdict = check(script.events)
    assert verdict.ok, verdict.problems()
    assert (verdict.confirmed, verdict.delivered, verdict.duplicates) == (5, 5, 0)
    assert verdict.lost == verdict.phantom == []


def test_a_confirmed_message_never_delivered_is_lost() -> None:
    script = Script()
    kept, missing = script.publish("p1", 1), script.publish("p1", 2)
    script.deliver(kept)
    script.add("fault", kind="kill", target="node1")
    verdict = check(script.events)
    assert not verdict.ok
    assert verdict.lost == [missing]
    assert verdict.faults == 1
    assert "lost=1" in verdict.summary()


def test_a_message_delivered_only_to_another_queue_is_lost_from_its_own() -> None:
    script = Script()
    identifier = script.publish("p1", 1, queue="a")
    script.deliver(identifier, queue="b")
    assert check(script.events).lost == [identifier]


def test_without_a_named_queue_any_queue_counts() -> None:
    script = Script()
    identifier = script.publish("p1", 1, queue=None)
    script.deliver(identifier, queue="shard-3")
    assert check(script.events).ok


def test_nacked_and_unknown_publishes_may_or_may_not_arrive() -> None:
    script = Script()
    nacked = script.publish("p1", 1, outcome="nack")
    script.publish("p1", 2, outcome="unknown")
    script.deliver(nacked)
    verdict = check(script.events)
    assert verdict.ok
    assert (verdict.confirmed, verdict.nacked, verdict.unknown) == (0, 1, 1)
    assert verdict.lost_unconfirmed_delivered == 1


def test_a_message_nobody_published_is_a_phantom() -> None:
    script = Script()
    script.publish("p1", 1)
    script.deliver(message_id("p1", 1))
    script.deliver(message_id("p9", 7))
    verdict = check(script.events)
    assert verdict.phantom == [message_id("p9", 7)]
    assert not verdict.ok


def test_duplicates_are_counted_not_failed() -> None:
    script = Script()
    identifier = script.publish("p1", 1)
    script.deliver(identifier)
    script.deliver(identifier, redelivered=True)
    script.deliver(identifier, consumer="c2")
    verdict = check(script.events)
    assert verdict.ok
    assert (verdict.duplicates, verdict.unflagged_duplicates, verdict.deliveries) == (2, 1, 3)


def test_a_settled_ack_that_comes_back_is_resurrected() -> None:
    script = Script()
    identifier = script.publish("p1", 1)
    script.deliver(identifier)
    script.ack(identifier)
    script.add("settled", channel="ch1")
    script.deliver(identifier, consumer="c2", redelivered=True)
    verdict = check(script.events)
    assert verdict.resurrected == [identifier]
    assert not verdict.ok


def test_an_ack_settled_just_before_a_fault_may_be_lost_with_it() -> None:
    script = Script()
    identifier = script.publish("p1", 1)
    script.deliver(identifier)
    script.ack(identifier)
    script.add("settled", channel="ch1")  # at t=4
    script.add("fault", kind="kill -9", target="node1")  # t=5: within the window
    script.deliver(identifier, consumer="c2", redelivered=True)
    assert check(script.events, ack_window=1.5).ok
    assert check(script.events, ack_window=1.5).acks_lost_in_fault == 1
    assert check(script.events, ack_window=0.5).resurrected == [identifier]


def test_an_ack_on_its_way_when_a_fault_came_may_be_lost_with_it() -> None:
    script = Script()
    identifier = script.publish("p1", 1)
    script.deliver(identifier)
    script.ack(identifier)  # t=3
    script.add("fault", kind="kill -9", target="leader")  # t=4: before the consumer's node said qos-ok
    script.add("settled", channel="ch1")
    script.deliver(identifier, consumer="c2", redelivered=True)
    verdict = check(script.events, ack_window=0.5)
    assert verdict.ok and verdict.acks_lost_in_fault == 1


def test_acks_lost_with_a_fault_are_told_apart_by_the_consumers_node() -> None:
    """A consumer connected to the killed node loses its acks with its connection; one connected
    elsewhere is counted in acks_lost_elsewhere (and a fault that names no node hits no consumer's)."""
    for consumer_url, fault_url, elsewhere in (("amqp://n1", "amqp://n1", 0), ("amqp://n2", "amqp://n1", 1),
                                               ("amqp://n2", None, 1)):
        script = Script()
        script.add("connect", url=consumer_url)
        identifier = script.publish("p1", 1)
        script.deliver(identifier)
        script.ack(identifier)
        script.add("fault", kind="kill -9", target="node1", **({"url": fault_url} if fault_url else {}))
        script.add("settled", channel="ch1")
        script.deliver(identifier, consumer="c2", redelivered=True)
        verdict = check(script.events, ack_window=0.5)
        assert verdict.ok and verdict.acks_lost_in_fault == 1
        assert verdict.acks_lost_elsewhere == elsewhere, (consumer_url, fault_url)


def test_an_ack_lost_with_its_own_node_killed_before_the_redelivery_is_not_lost_elsewhere() -> None:
    """The leader dies as the ack reaches the consumer's node, which then leads the queue with the ack
    applied and dies in turn before passing it on: the ack died with the consumer's node. Killed only
    after the redelivery, that node is no excuse."""
    for own_node_killed_before_the_redelivery, elsewhere in ((True, 0), (False, 1)):
        script = Script()
        script.add("connect", url="amqp://n2")
        identifier = script.publish("p1", 1)
        script.deliver(identifier)
        script.ack(identifier)
        script.add("fault", kind="kill -9", target="node1", url="amqp://n1")
        script.add("settled", channel="ch1")  # events are 1 s apart: the next fault is out of the window
        if own_node_killed_before_the_redelivery:
            script.add("fault", kind="kill -9", target="node2", url="amqp://n2")
        script.deliver(identifier, consumer="c2", redelivered=True)
        if not own_node_killed_before_the_redelivery:
            script.add("fault", kind="kill -9", target="node2", url="amqp://n2")
        verdict = check(script.events, ack_window=0.5)
        assert verdict.acks_lost_in_fault == 1
        assert verdict.acks_lost_elsewhere == elsewhere, own_node_killed_before_the_redelivery


def test_a_fault_well_before_the_ack_excuses_nothing() -> None:
    script = Script()
    identifier = script.publish("p1", 1)
    script.add("fault", kind="kill -9", target="leader")  # t=2
    script.deliver(identifier)
    script.ack(identifier)  # t=4
    script.add("settled", channel="ch1")
    script.deliver(identifier, consumer="c2", redelivered=True)
    assert check(script.events, ack_window=1.5).resurrected == [identifier]
    assert check(script.events, ack_window=2.5).acks_lost_in_fault == 1  # an ack in flight at the fault


def test_an_ack_in_flight_at_a_failover_may_be_lost_with_it() -> None:
    script = Script()
    identifier = script.publish("p1", 1)
    script.add("fault", kind="etcd links dropped", target="node1")  # t=2: the lease runs out later
    script.deliver(identifier)
    script.ack(identifier)  # t=4
    script.add("failover", queue="q", leader="node2")  # t=5
    script.add("settled", channel="ch1")
    script.deliver(identifier, consumer="c2", redelivered=True)
    verdict = check(script.events, ack_window=1.5)
    assert verdict.ok and verdict.acks_lost_in_fault == 1
    assert verdict.faults == 1  # a failover is not counted as a fault


def test_a_failover_counts_over_the_span_its_polls_bound() -> None:
    script = Script()
    identifier = script.publish("p1", 1)
    script.deliver(identifier)
    script.ack(identifier)  # t=3
    script.add("settled", channel="ch1")
    script.deliver(identifier, consumer="c2", redelivered=True)  # t=5
    script.add("failover", queue="q", leader="node2", since=4.5)  # t=6: moved some time in [4.5, 6]
    assert check(script.events, ack_window=0.5).acks_lost_in_fault == 1
    script.events[-1]["since"] = 5.5  # moved after the redelivery: it explains nothing
    assert check(script.events, ack_window=0.25).resurrected == [identifier]


def test_an_ack_not_yet_settled_may_be_lost_with_its_broker() -> None:
    script = Script()
    identifier = script.publish("p1", 1)
    script.deliver(identifier)
    script.ack(identifier)
    script.add("settled", channel="another-channel")
    script.deliver(identifier, consumer="c2", redelivered=True)
    assert check(script.events).ok


def test_first_deliveries_out_of_publish_order_are_reordered() -> None:
    script = Script()
    first, second, third = (script.publish("p1", seq) for seq in (1, 2, 3))
    script.deliver(first)
    script.deliver(third)
    script.deliver(second)
    verdict = check(script.events)
    assert verdict.reordered == [second]


def test_order_is_per_consumer_publisher_and_queue_and_ignores_redeliveries() -> None:
    script = Script()
    a1, a2 = script.publish("p1", 1), script.publish("p1", 2)
    b1 = script.publish("p2", 1)
    script.deliver(a2, consumer="c1")
    script.deliver(a1, consumer="c2")  # another consumer of the same queue: no order between them
    script.deliver(b1, consumer="c1")  # another publisher
    late = script.publish("p1", 3)
    early = script.publish("p1", 0)
    script.deliver(late)
    script.deliver(early, redelivered=True)  # a requeued message may come back after later ones
    assert check(script.events).ok


def test_histories_written_by_recorders_merge_in_time_order(tmp_path: Path) -> None:
    publisher = Recorder(tmp_path / "publisher.jsonl", "pub")
    consumer = Recorder(tmp_path / "consumer.jsonl", "con")
    identifier = message_id("pub.1", 1)
    publisher.record("publish", id=identifier, publisher="pub.1", seq=1, queue="q")
    consumer.record("deliver", id=identifier, queue="q", consumer="con.1", redelivered=False, channel="c")
    publisher.record("confirm", id=identifier, outcome="ack")
    publisher.close()
    consumer.close()
    with (tmp_path / "consumer.jsonl").open("a") as torn:
        torn.write('{"op": "deliv')  # a client killed mid-line
    events = read_directory(tmp_path)
    assert [event["op"] for event in events] == ["publish", "deliver", "confirm"]
    assert check(events).ok
    assert json.loads((tmp_path / "publisher.jsonl").read_text().splitlines()[0])["client"] == "pub"
