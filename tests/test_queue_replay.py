"""Replaying a queue's commands: a random sequence of commands (hypothesis) run on one queue, then its
log of (command, now) applied to a fresh queue, gives the same ready and unacked messages and the same
effects at every step. That is what lets a log be replayed at recovery, or shipped to a replica.

Queues of every kind are tried: plain, with a message TTL, a length limit, priorities, dead-lettering and
a quorum queue's delivery limit. The durable log's records are effects too (JOURNAL), compared like the
rest. The same sequence run on a durable queue, its JOURNAL effects carried out by the vhost's executor,
and recovered from disk brings back every message it held, in order, its returned or delivered ones
flagged redelivered.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field, replace
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pamqp.commands import Basic

from leveret.amqp.properties import encode_properties
from leveret.broker.message import Message
from leveret.broker.node import Node
from leveret.broker.persistence import Persistence
from leveret.broker.queues import commands
from leveret.broker.queues.effects import DEAD_LETTER, DELIVER, JOURNAL
from leveret.broker.queues.entry import Entry
from leveret.broker.queues.journal import Journal
from leveret.broker.queues.queue import Queue
from leveret.broker.queues.subscriber import CreditPool
from leveret.broker.store import records, segments
from leveret.broker.vhost import VirtualHost
from leveret.config import Config

KINDS: dict[str, dict[str, Any]] = {
    "plain": {},
    "ttl": {"x-message-ttl": 50},
    "limited": {"x-max-length": 3, "x-dead-letter-exchange": "dlx"},
    "priorities": {"x-max-priority": 3},
    "quorum": {"x-queue-type": "quorum", "x-delivery-limit": 2, "x-dead-letter-exchange": "dlx"},
}


@dataclass(eq=False)
class Consumer:
    """A consumer as a queue knows it (plain data); never sent anything, since apply carries out no
    effect."""

    tag: str
    no_ack: bool = False
    exclusive: bool = False
    priority: int = 0
    credit: int = 0
    pool: CreditPool | None = None
    output: CreditPool = field(default_factory=lambda: CreditPool(1 << 62))  # no output bound
    channel: Any = field(default=None, repr=False)


def publish(body: int, priority: int, persistent: bool) -> Message:
    properties = encode_properties(Basic.Properties(priority=priority, delivery_mode=2 if persistent else 1))
    return Message("", "q", properties, str(body).encode())


def draw_command(draw: Any, queue: Queue, consumers: list[Consumer], n: int) -> commands.Command:
    """The `n`th command, valid in the state the ones before left (the seqs it settles or returns are
    ones the queue has checked out)."""
    attached = [c for c in consumers if c in queue.consumers]
    choices = ["enqueue", "enqueue", "attach", "take"]
    if attached:
        choices += ["credit", "credit", "detach"]
    if queue.checked_out:
        choices += ["settle", "return", "return", "reject"]
    if n % 7 == 6:
        choices.append("purge")
    held = sorted({entry.seq for entry in queue.ready} | set(queue.checked_out))
    if held and n % 5 == 4:
        choices.append("discard")  # a failed commit's nacked publishes (see Queue.discard)
    choice = draw(st.sampled_from(choices))
    if choice == "discard":
        return (commands.DISCARD, draw(st.lists(st.sampled_from(held), min_size=1, unique=True)))
    if choice == "enqueue":
        return (commands.ENQUEUE, publish(n, draw(st.integers(0, 4)), draw(st.booleans())))
    if choice == "attach":
        return (commands.ATTACH, consumers[draw(st.integers(0, len(consumers) - 1))])
    if choice == "take":
        return (commands.TAKE,)
    if choice == "credit":
        return (commands.CREDIT, draw(st.sampled_from(attached)), draw(st.integers(0, 3)))
    if choice == "detach":
        return (commands.DETACH, draw(st.sampled_from(attached)))
    if choice == "purge":
        return (commands.PURGE,)
    seqs = draw(st.lists(st.sampled_from(sorted(queue.checked_out)), min_size=1, unique=True))
    return ({"settle": commands.SETTLE, "return": commands.RETURN, "reject": commands.REJECT}[choice], seqs)


def translated(command: commands.Command, consumers: dict[str, Consumer]) -> commands.Command:
    """The same command for the fresh queue: its own consumer objects, found by tag."""
    return tuple(consumers[arg.tag] if isinstance(arg, Consumer) else arg for arg in command)


def state(queue: Queue) -> tuple[Any, ...]:
    ready = [(e.seq, e.message.body, e.redelivered, e.message.properties_raw) for e in queue.ready]
    unacked = sorted((seq, e.message.body) for seq, e in queue.checked_out.items())
    credits = [(c.tag, c.credit) for c in queue.consumers]  # type: ignore[attr-defined]
    return ready, unacked, sorted(queue.nacked_out), queue.message_count, credits


def shown(reply: Any, effects: list[Any]) -> tuple[Any, ...]:
    """A command's outcome without object identities: entries and messages by their contents."""
    if isinstance(reply, list):
        reply = [entry.seq for entry in reply]
    elif reply is not None and not isinstance(reply, int):
        reply = (reply.seq, reply.message.body, reply.redelivered)
    out = []
    for effect in effects:
        if effect[0] == DELIVER:
            entry = effect[2]
            out.append((DELIVER, effect[1].tag, entry.seq, entry.message.body, entry.message.properties_raw))
        elif effect[0] == DEAD_LETTER:
            out.append((DEAD_LETTER, [m.body for m in effect[1]], effect[2]))
        elif effect[0] == JOURNAL:  # a record for the durable log: entries by seq
            out.append((JOURNAL, effect[1], *(_seqs(arg) for arg in effect[2:])))
        else:
            out.append(effect)
    return reply, out


def _seqs(value: Any) -> Any:
    if isinstance(value, list):
        return [entry.seq for entry in value]
    return value.seq if isinstance(value, Entry) else value


def declare(vhost: VirtualHost, kind: str, durable: bool = False) -> Queue:
    # A quorum queue is durable or refused (RabbitMQ's rule): without a store, its journal is a null one.
    return vhost.declare_queue(
        "q", owner=None, durable=durable or kind == "quorum", exclusive=False, auto_delete=False,
        arguments=dict(KINDS[kind]),
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(sorted(KINDS)), data=st.data(), count=st.integers(1, 60))
def test_a_fresh_queue_applying_the_log_reaches_the_same_state_and_effects(
    kind: str, data: st.DataObject, count: int
) -> None:
    original = declare(VirtualHost("/", clock=lambda: 0.0), kind)
    original.journal = Journal()  # a journal that keeps nothing, but is not NULL_JOURNAL: records come out
    consumers = [Consumer(f"c{i}", priority=i % 2) for i in range(3)]
    log: list[tuple[commands.Command, float]] = []
    outcomes = []
    for n in range(count):
        command = draw_command(data.draw, original, consumers, n)
        now = n * 0.02  # past the TTL of messages a few commands old
        log.append((command, now))
        outcomes.append((shown(*original.apply(command, now)), state(original)))

    replica = declare(VirtualHost("/", clock=lambda: 0.0), kind)
    replica.journal = Journal()
    fresh = {c.tag: Consumer(c.tag, priority=c.priority) for c in consumers}
    for (command, now), (outcome, after) in zip(log, outcomes, strict=True):
        assert shown(*replica.apply(translated(command, fresh), now)) == outcome, command
        assert state(replica) == after, command


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(["plain", "priorities", "quorum"]), data=st.data(), count=st.integers(1, 40))
def test_recovery_from_disk_brings_back_what_the_queue_held(
    kind: str, data: st.DataObject, count: int
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        node = open_node(directory)
        queue = declare(node.vhosts["/"], kind, durable=True)
        consumers = [Consumer(f"c{i}") for i in range(2)]
        for n in range(count):
            _, effects = queue.apply(draw_command(data.draw, queue, consumers, n), 0.0)
            for effect in effects:  # the executor's part that matters here: the log's records
                if effect[0] == JOURNAL:
                    node.vhosts["/"].executor.run(queue, effect)
        held = sorted([*queue.ready, *queue.checked_out.values()], key=lambda entry: entry.seq)
        held = [entry for entry in held if entry.seq not in queue.nacked_out]  # discarded: settled
        persistent = [e for e in held if e.message.delivery_mode == 2]
        delivered = {e.seq for e in persistent if e.redelivered or e.seq in queue.checked_out}
        assert node.persistence is not None
        node.persistence.close()

        recovered = open_node(directory).vhosts["/"].queues["q"]
        back = [(e.seq, e.message.body, e.redelivered) for e in recovered.ready]
        if kind == "priorities":  # by priority, then in order: compare the set
            back.sort()
        assert back == [(e.seq, e.message.body, e.seq in delivered) for e in persistent]
        assert recovered.unacked == 0


def open_node(directory: str) -> Node:
    node = Node(replace(Config(), data_dir=directory), clock=lambda: 0.0)
    persistence = Persistence(directory)
    node.attach_persistence(persistence)
    persistence.recover(node)
    return node


def removals_logged(queue: Queue) -> list[tuple[str, list[int]]]:
    """(kind, seqs) of the settle and removal records in a durable queue's log, in order."""
    directory = queue.journal.log.directory  # type: ignore[attr-defined]
    found: list[tuple[str, list[int]]] = []
    for index in segments.list_segments(directory):
        reader = segments.open_segment(segments.segment_path(directory, index))
        assert reader is not None
        for kind, start, end in reader:
            if kind == records.SETTLE:
                found.append(("settle", list(records.decode_settle(reader.data, start, end))))
            elif kind == records.REMOVED:
                _, reason, seqs = records.decode_removed(reader.data, start, end)
                found.append((reason, list(seqs)))
    return found


def test_a_purge_is_logged_as_a_removal_for_the_reason_purged_and_stays_purged() -> None:
    with tempfile.TemporaryDirectory() as directory:
        node = open_node(directory)
        queue = declare(node.vhosts["/"], "plain", durable=True)
        for n in range(5):
            queue.enqueue(publish(n, 0, persistent=True))
        taken = queue.take()  # unacked: a purge leaves it
        assert isinstance(taken, Entry)
        assert queue.purge() == 4
        assert node.persistence is not None
        node.persistence.close()  # writes what is pending
        assert removals_logged(queue) == [("purged", [2, 3, 4, 5])]

        recovered = open_node(directory).vhosts["/"].queues["q"]
        assert [(e.seq, e.redelivered) for e in recovered.ready] == [(1, True)]


def test_a_log_whose_purge_was_settle_records_recovers_the_same() -> None:
    # What a purge wrote before it was a removal: a settle record for the messages it dropped.
    with tempfile.TemporaryDirectory() as directory:
        node = open_node(directory)
        queue = declare(node.vhosts["/"], "plain", durable=True)
        for n in range(5):
            queue.enqueue(publish(n, 0, persistent=True))
        queue.journal.settled([entry for entry in queue.ready if entry.seq > 1])
        assert node.persistence is not None
        node.persistence.close()
        assert removals_logged(queue) == [("settle", [2, 3, 4, 5])]

        recovered = open_node(directory).vhosts["/"].queues["q"]
        assert [(e.seq, e.redelivered) for e in recovered.ready] == [(1, False)]


def test_a_publish_handed_straight_to_a_consumer_under_apply_records_its_delivery() -> None:
    """Its enqueue record is an effect not yet written when the same command delivers it: the delivery is
    recorded all the same, so it comes back redelivered."""
    with tempfile.TemporaryDirectory() as directory:
        node = open_node(directory)
        queue = declare(node.vhosts["/"], "plain", durable=True)
        consumer = Consumer("c")
        queue.apply((commands.ATTACH, consumer), 0.0)
        queue.apply((commands.CREDIT, consumer, 1), 0.0)
        _, effects = queue.apply((commands.ENQUEUE, publish(1, 0, True)), 0.0)
        records = [effect for effect in effects if effect[0] == JOURNAL]
        assert [record[1] for record in records] == ["enqueued", "delivered"]
        for record in records:
            node.vhosts["/"].executor.run(queue, record)
        assert node.persistence is not None
        node.persistence.close()
        recovered = open_node(directory).vhosts["/"].queues["q"]
        assert [(e.message.body, e.redelivered) for e in recovered.ready] == [(b"1", True)]
