"""The verdict on a history (see history.py): what the broker promised and what the clients saw.

- lost: a confirmed message never delivered (to its queue, when the publish named one);
- phantom: a delivery of a message nobody published;
- resurrected: a delivery of a message after an ack for it was settled (a later synchronous reply on the
  channel showed the broker had taken the ack), unless a fault or a failover came from `ack_window`
  seconds before the ack to `ack_window` seconds after the settle (and before the delivery; a failover
  when the span its polls bound meets that): those count as
  `acks_lost_in_fault`, and of those, `acks_lost_elsewhere` counts the ones whose consumer was connected
  to none of the nodes those faults hit (a fault's `url`; a failover hits no consumer's node): a consumer
  on a killed node loses its acks with its connection (RabbitMQ's quorum queues too), one elsewhere need
  not; nor one whose own node a fault hit later, before the redelivery (its node had taken the ack,
  and led the queue by then, or was to pass it on: the ack died with it). A node may write acks
  lazily (Leveret with its next group commit, as `interop/test_crash_loop.py` bounds), and the node
  a consumer is connected to answers basic.qos itself while the ack is still on its way to the queue's
  leader, which may have just died;
- reordered: within one consumer, a first delivery that is not flagged redelivered and comes after a later
  message of the same publisher on the same queue;
- duplicates: deliveries beyond the first of a message on a queue (allowed: at least once), of which
  `unflagged_duplicates` came without the redelivered flag.

Nacked and unknown publishes may or may not be delivered; either is fine.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from .history import Event, split_id

SAMPLE = 10  # ids shown per problem


@dataclass
class Verdict:
    faults: int = 0
    published: int = 0
    confirmed: int = 0
    nacked: int = 0
    unknown: int = 0
    delivered: int = 0  # distinct (queue, id)
    deliveries: int = 0
    lost: list[str] = field(default_factory=list)
    phantom: list[str] = field(default_factory=list)
    resurrected: list[str] = field(default_factory=list)
    reordered: list[str] = field(default_factory=list)
    duplicates: int = 0
    unflagged_duplicates: int = 0
    lost_unconfirmed_delivered: int = 0  # nacked or unknown, and delivered anyway (allowed)
    acks_lost_in_fault: int = 0
    acks_lost_elsewhere: int = 0  # of those, by consumers connected to no node a fault in the window hit

    @property
    def ok(self) -> bool:
        return not (self.lost or self.phantom or self.resurrected or self.reordered)

    def summary(self) -> str:
        return (
            f"faults={self.faults} confirmed={self.confirmed} lost={len(self.lost)} "
            f"phantom={len(self.phantom)} duplicates={self.duplicates}"
            f" | published={self.published} nacked={self.nacked} unknown={self.unknown}"
            f" delivered={self.delivered} resurrected={len(self.resurrected)}"
            f" reordered={len(self.reordered)} unflagged_duplicates={self.unflagged_duplicates}"
            f" acks_lost_in_fault={self.acks_lost_in_fault} acks_lost_elsewhere={self.acks_lost_elsewhere}"
        )

    def problems(self) -> str:
        """The first few ids of each violation, for an assertion message."""
        parts = [
            f"{name} {len(ids)}: {ids[:SAMPLE]}"
            for name, ids in (
                ("lost", self.lost),
                ("phantom", self.phantom),
                ("resurrected", self.resurrected),
                ("reordered", self.reordered),
            )
            if ids
        ]
        return "; ".join(parts) or "none"


DEFAULT_ACK_WINDOW = 0.5


def check(events: Iterable[Event], ack_window: float = DEFAULT_ACK_WINDOW) -> Verdict:
    """The verdict on a history; `events` in time order (as `read_events` gives them)."""
    verdict = Verdict()
    target: dict[str, str | None] = {}  # id -> the queue its publish named
    outcome: dict[str, str] = {}
    seen: dict[tuple[str, str], int] = defaultdict(int)  # (queue, id) -> deliveries so far
    delivered_ids: set[str] = set()
    connected: dict[str, str] = {}  # client -> the URL of its latest connection
    # channel -> ((queue, id), when acked, the acking client's URL) for acks not yet settled
    acks_waiting: dict[str, list[tuple[tuple[str, str], float, str]]] = defaultdict(list)
    # (queue, id) -> (acked at, settled at, the acking client's URL)
    settled: dict[tuple[str, str], tuple[float, float, str]] = {}
    # (id, acked at, settled at, the acking client's URL, delivered again at)
    returns: list[tuple[str, float, float, str, float]] = []
    fault_times: list[tuple[float, str]] = []  # (when, the URL of the node it hit, "" if none given)
    failovers: list[tuple[float, float]] = []  # (since, seen): when a leader moved, as bounded by polls
    newest: dict[tuple[str, str, str], int] = {}  # (consumer, queue, publisher) -> highest first seq
    for event in events:
        op = event["op"]
        if op == "publish":
            target[event["id"]] = event.get("queue")
        elif op == "confirm":
            # An ack wins over an earlier unknown (a client never reports both, but a merged history may).
            if outcome.get(event["id"]) != "ack":
                outcome[event["id"]] = event["outcome"]
        elif op == "deliver":
            _deliver(verdict, event, target, seen, delivered_ids, settled, returns, newest)
        elif op == "connect":
            connected[event["client"]] = event.get("url", "")
        elif op == "ack":
            url = connected.get(event["client"], "")
            acks_waiting[event["channel"]].append(((event["queue"], event["id"]), event["t"], url))
        elif op == "settled":
            for key, acked_at, url in acks_waiting.pop(event["channel"], ()):
                settled.setdefault(key, (acked_at, event["t"], url))
        elif op == "fault":
            verdict.faults += 1
            fault_times.append((event["t"], event.get("url", "")))
        elif op == "failover":
            failovers.append((event.get("since", event["t"]), event["t"]))
    for identifier, acked_at, settled_at, url, again_at in returns:
        start, end = acked_at - ack_window, min(settled_at + ack_window, again_at)
        hit = [hit_url for t, hit_url in fault_times if start <= t <= end]
        if hit or any(since <= end and seen >= start for since, seen in failovers):
            verdict.acks_lost_in_fault += 1
            own_node_hit = url and any(hit_url == url for t, hit_url in fault_times if start <= t <= again_at)
            if not own_node_hit:
                verdict.acks_lost_elsewhere += 1
        else:
            verdict.resurrected.append(identifier)
    verdict.published = len(target)
    for identifier, result in outcome.items():
        if result == "ack":
            verdict.confirmed += 1
            queue = target.get(identifier)
            arrived = (queue, identifier) in seen if queue is not None else identifier in delivered_ids
            if not arrived:
                verdict.lost.append(identifier)
        elif identifier in delivered_ids:
            verdict.lost_unconfirmed_delivered += 1
        if result == "nack":
            verdict.nacked += 1
        elif result == "unknown":
            verdict.unknown += 1
    verdict.delivered = len(seen)
    return verdict


def _deliver(
    verdict: Verdict,
    event: Event,
    target: dict[str, str | None],
    seen: dict[tuple[str, str], int],
    delivered_ids: set[str],
    settled: dict[tuple[str, str], tuple[float, float, str]],
    returns: list[tuple[str, float, float, str, float]],
    newest: dict[tuple[str, str, str], int],
) -> None:
    identifier, queue = event["id"], event["queue"]
    key = (queue, identifier)
    verdict.deliveries += 1
    # A delivery may overtake its publish event across clients' clocks only by the scheduling jitter
    # of one machine; the publish is recorded before the message is sent, so it is always earlier.
    if identifier not in target:
        verdict.phantom.append(identifier)
        return
    if key in settled:
        returns.append((identifier, *settled[key], event["t"]))
    seen[key] += 1
    delivered_ids.add(identifier)
    if seen[key] > 1:
        verdict.duplicates += 1
        if not event["redelivered"]:
            verdict.unflagged_duplicates += 1
        return
    parsed = split_id(identifier)
    if parsed is None or event["redelivered"]:
        return
    publisher, seq = parsed
    stream = (event["consumer"], queue, publisher)
    if seq < newest.get(stream, -1):
        verdict.reordered.append(identifier)
    else:
        newest[stream] = seq
