"""A proxy queue: this node's stand-in for a replicated queue another node leads.

It has the queue's name and definition, so declares, bindings and routing are unchanged (an exchange routes
where the publish arrives), but it stores nothing: what is done to it goes to the leader through the
node's hub (broker/cluster/remote.py), which sends it over the peer link, and what the leader sends back
(deliveries, cancellations) comes to its consumers through the hub.

Deliveries from the leader are numbered here with seqs of the proxy's own (`remote_seqs` maps them to the
leader's seq and the link they came over). The leader's seq is the message's seq in the queue's replicated
log, the same on every replica, so when the leader moves (or the link to it breaks) what this node's
clients hold and the settlements not yet replicated (`unsettled`) are handed to the next leader in a
claim (broker/cluster/remote.py), and the clients keep their delivery tags.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

from leveret.broker.message import Message
from leveret.broker.queues.entry import Entry
from leveret.broker.queues.queue import Queue

if TYPE_CHECKING:
    from leveret.broker.queues.host import QueueHost
    from leveret.broker.queues.paging import HeadGetter, HeadLoading
    from leveret.broker.queues.subscriber import Subscriber


# Where a delivery adopted from a deposed leader's queue is held until the next leader's claim: no node,
# and a link generation that never is, so its settlements wait in `unsettled` for that claim.
UNCLAIMED = ("", -1)


class Hub(Protocol):
    """What a proxy needs of the node's hub (broker/cluster/remote.RemoteQueues)."""

    def publish(self, proxy: ProxyQueue, message: Message) -> Any: ...

    def settle(self, proxy: ProxyQueue, how: str, taken: list[tuple[str, int, int]]) -> None: ...

    def attach(self, proxy: ProxyQueue, consumer: Any, cid: int = 0) -> None: ...

    def detach(self, consumer: Any) -> None: ...

    def credit(self, consumer: Any) -> None: ...

    def proxy_deleted(self, proxy: ProxyQueue) -> None: ...


class ProxyQueue(Queue):
    def __init__(
        self,
        name: str,
        vhost: str,
        host: QueueHost,
        hub: Hub,
        *,
        durable: bool,
        auto_delete: bool,
        arguments: dict[str, Any],
    ) -> None:
        super().__init__(
            name,
            vhost,
            durable=durable,
            auto_delete=auto_delete,
            arguments=arguments,
            host=host,
        )
        self.hub = hub
        # Publishes waiting for the queue to have a leader: (message, its confirm ticket, since when).
        self.waiting: list[tuple[Message, Any, float]] = []
        # Our seq of an unacked delivery -> (the node it came from, that link's generation, its seq there).
        self.remote_seqs: dict[int, tuple[str, int, int]] = {}
        # Settlements a leader has not said are replicated: its seq -> how (remote_codec's ACK, REJECT...).
        self.unsettled: dict[int, int] = {}
        # The leader (and link generation) that holds this node's unacked messages of the queue, since
        # the first delivery or the last claim; `claim_due`: they must be claimed again (a new leader, a
        # broken link, a settlement that was not applied).
        self.held_at: tuple[str, int] | None = None
        self.claim_due = False
        self._local_seq = itertools.count(1)
        # The leader's ready messages, consumers and unacked ones, as last heard (declare-ok, management).
        self.known_counts = (0, 0, 0)

    def __repr__(self) -> str:
        return f"<ProxyQueue {self.name!r} in {self.vhost!r}>"

    @property
    def message_count(self) -> int:
        return self.known_counts[0]

    @property
    def unacked(self) -> int:
        return self.known_counts[2]

    @property
    def consumer_count(self) -> int:
        return self.known_counts[1]

    def received(self, node: str, generation: int, seq: int, message: Message, redelivered: bool,
                 ack_required: bool) -> Entry:
        """A delivery (or basic.get) from the leader, as an entry of this proxy."""
        local = next(self._local_seq)
        if ack_required:
            self.remote_seqs[local] = (node, generation, seq)
            if self.held_at != (node, generation):
                if self.held_at is None:
                    self.held_at = (node, generation)
                else:  # from another leader than the one the rest is held at (a get answered late)
                    self.claim_due = True
        return Entry(message, local, redelivered)

    def adopt(self, seq: int) -> int:
        """A delivery (the queue's log seq `seq`) a client holds from the queue this proxy took the place
        of (this node led it until now): this proxy's from now on, claimed at the next leader. Returns
        its seq here, which the client's channel settles it by."""
        local = next(self._local_seq)
        self.remote_seqs[local] = UNCLAIMED + (seq,)
        self.claim_due = True
        return local

    def _taken(self, seqs: Iterable[int]) -> list[tuple[str, int, int]]:
        pop = self.remote_seqs.pop
        return [held for held in (pop(seq, None) for seq in seqs) if held is not None]

    # ---- what a channel does to a queue, sent to the leader --------------------------------------------

    def enqueue(self, message: Message) -> Any:
        return self.hub.publish(self, message)

    def settle(self, seqs: Iterable[int]) -> list[Entry]:
        self.hub.settle(self, "ack", self._taken(seqs))
        return []

    def reject(self, seqs: Iterable[int]) -> list[Entry]:
        self.hub.settle(self, "reject", self._taken(seqs))
        return []

    def requeue(self, seqs: Iterable[int]) -> None:
        self.hub.settle(self, "requeue", self._taken(seqs))

    def add_consumer(self, consumer: Subscriber, cid: int = 0) -> None:
        """`cid`: the consumer's id in the CONSUMABLE call the leader answered (0: none was made)."""
        self.consumers.append(consumer)
        self.had_consumers = True
        self.hub.attach(self, consumer, cid)

    def remove_consumer(self, consumer: Subscriber) -> None:
        try:
            self.consumers.remove(consumer)
        except ValueError:
            return
        self.hub.detach(consumer)

    def credit(self, consumer: Subscriber, credit: int) -> None:
        consumer.credit = credit
        self.hub.credit(consumer)

    def delete(self) -> None:
        self.deleted = True
        self.hub.proxy_deleted(self)

    # ---- what only the leader's queue does -------------------------------------------------------------

    def take(self, getter: HeadGetter | None = None) -> Entry | HeadLoading | None:
        return None  # a channel's basic.get asks the leader (ChannelSession._get); nothing is held here

    def purge(self) -> int:
        return 0  # a channel's queue.purge asks the leader

    def discard(self, seqs: Iterable[int]) -> int:
        return 0

    def credit_changed(self) -> None:
        # A channel-wide prefetch got credit back (an ack): this node's consumers may draw on it.
        for consumer in self.consumers:
            if consumer.pool is not None:
                self.hub.credit(consumer)

    def deliver_ready(self) -> None:
        pass

    def touch(self) -> None:
        pass

    def tick(self) -> None:
        pass

    def on_deadline(self, now: float) -> None:
        pass

    def page_out(self, want: int) -> int:
        return 0


def is_proxy(queue: object) -> bool:
    return isinstance(queue, ProxyQueue)
