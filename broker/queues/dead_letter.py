"""Dead-lettering: a message a queue removes (rejected, expired, maxlen, delivery_limit) is republished
to the queue's dead-letter exchange with its story in the `x-death` header, as RabbitMQ 3.10 writes it.

At most once (`dead_letter`): the copy is routed and enqueued like a publish without confirms; a missing
exchange drops it. At least once (`forward`, quorum queues with x-dead-letter-strategy, see outbox.py): the
source queue holds the message until each target took its copy. A message that would come back to a
queue it died in, through deaths none of which was a client's reject, is dropped there (the cycle would
never end).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from leveret.amqp import tables
from leveret.amqp.properties import EXPIRATION, HEADERS, join_properties, split_properties
from leveret.broker.message import Message

if TYPE_CHECKING:
    from leveret.broker.queues.host import QueueHost
    from leveret.broker.queues.settings import QueueSettings

log = logging.getLogger(__name__)

EXPIRED = "expired"
REJECTED = "rejected"
MAXLEN = "maxlen"
DELIVERY_LIMIT = "delivery_limit"

# (queue, reason) of each x-death entry, newest first; None for an entry that is not a table.
Deaths = list[tuple[str, str] | None]


def dead_letter(
    host: QueueHost,
    settings: QueueSettings,
    queue_name: str,
    messages: list[Message],
    reason: str,
    wall_clock: Callable[[], float] = time.time,
) -> None:
    """Publish the dead-lettered copies of `messages`, which `queue_name` removed for `reason`."""
    assert settings.dead_letter_exchange is not None
    exchange = host.exchanges.get(settings.dead_letter_exchange)
    if exchange is None:
        return
    death = Death(reason, queue_name, int(wall_clock()))
    for message in messages:
        try:
            copy, deaths = death.copy(message, exchange.name, settings.dead_letter_routing_key)
        except tables.TableError as error:
            log.warning("message %s from queue '%s' not dead-lettered: %s", reason, queue_name, error)
            continue
        for target in host.route(exchange, copy):
            if reason == REJECTED or not is_cycle(target.name, deaths):
                target.enqueue(copy)


def forward(
    host: QueueHost,
    settings: QueueSettings,
    queue_name: str,
    message: Message,
    reason: str,
    taken: dict[str, int],
    wall_clock: Callable[[], float] = time.time,
) -> bool:
    """Dead-letter one message at least once, to the queues it routes to that have no copy yet: `taken`
    (updated) names those that have one, with the store position each copy waits for (0: none), so that a
    retry never duplicates it into a queue that took it, as RabbitMQ's rabbit_fifo_dlx_worker. Whether
    every queue it routes to has a copy now (False when it routes nowhere, or one refused it: it is
    forwarded again later)."""
    assert settings.dead_letter_exchange is not None
    exchange = host.exchanges.get(settings.dead_letter_exchange)
    if exchange is None:
        return False
    try:
        copy, deaths = Death(reason, queue_name, int(wall_clock())).copy(
            message, exchange.name, settings.dead_letter_routing_key
        )
    except tables.TableError as error:
        # It never can be: RabbitMQ would hold it for ever; it goes, and the log says so.
        log.warning("message %s from queue '%s' not dead-lettered: %s", reason, queue_name, error)
        return True
    targets = [t for t in host.route(exchange, copy) if reason == REJECTED or not is_cycle(t.name, deaths)]
    if not targets:
        return False
    everywhere = True
    for target in targets:
        if target.name in taken:
            continue
        needed = target.enqueue(copy)
        if needed is None:
            everywhere = False
        else:
            taken[target.name] = needed
    return everywhere


class Death:
    """Messages one queue removes for one reason at one time (an expiry batch can be large): what their
    x-death entries share is encoded once, and so are the whole headers of messages that had none."""

    def __init__(self, reason: str, queue: str, now: int) -> None:
        self.reason = reason
        self.queue = queue
        self._shared = [
            ("reason", tables.longstr(reason)),
            ("queue", tables.longstr(queue)),
            ("time", tables.timestamp(now)),
        ]
        self._first_headers: dict[tuple[str, str, str | None], bytes] = {}

    def copy(self, message: Message, exchange: str, routing_key: str | None) -> tuple[Message, Deaths]:
        """The message as it leaves for `exchange`: x-death updated, per-message expiration removed, routed
        by `routing_key` when the queue names one (and then without its CC header), else by its own."""
        fields = split_properties(message.properties_raw)
        if HEADERS in fields:
            headers, deaths = self._record(tables.split_table(fields[HEADERS]), message)
            if routing_key is not None:
                headers = [entry for entry in headers if entry[0] != "CC"]
            fields[HEADERS] = tables.table_field(headers)
        else:
            key = (message.exchange, message.routing_key, message.expiration)
            field = self._first_headers.get(key)
            if field is None:
                field = self._first_headers[key] = tables.table_field(self._record([], message)[0])
            fields[HEADERS] = field
            deaths = [(self.queue, self.reason)]
        fields.pop(EXPIRATION, None)
        copy = Message(exchange, message.routing_key if routing_key is None else routing_key,
                       join_properties(fields), message.body)
        return copy, deaths

    def _record(self, headers: tables.Entries, message: Message) -> tuple[tables.Entries, Deaths]:
        """Headers with this death recorded. A first one also sets x-first-death-*; a repeat of an
        earlier (queue, reason) counts up that entry (which keeps its first time, exchange and keys) and
        moves it first."""
        queue, reason = self.queue, self.reason
        routing_keys = [message.routing_key] + _cc(headers)
        counted = [
            ("count", tables.long(1)),
            *self._shared,
            ("exchange", tables.longstr(message.exchange)),
            ("routing-keys", tables.array([tables.longstr(key) for key in routing_keys])),
        ]
        if message.expiration is not None:
            counted.append(("original-expiration", tables.longstr(message.expiration)))
        found = dict(headers)
        x_death = found.get("x-death")
        deaths: Deaths
        if x_death is None:
            found["x-first-death-reason"] = tables.longstr(reason)
            found["x-first-death-queue"] = tables.longstr(queue)
            found["x-first-death-exchange"] = tables.longstr(message.exchange)
            items, deaths = [tables.table(counted)], [(queue, reason)]
        elif x_death[:1] != b"A":
            # Not an array (a client re-published it with changed types): RabbitMQ starts it over.
            items, deaths = [tables.table(counted)], [(queue, reason)]
        else:
            old_items = tables.split_array(x_death)
            old_deaths = [_death(item) for item in old_items]
            match = next((i for i, death in enumerate(old_deaths) if death == (queue, reason)), None)
            if match is None:
                newest = tables.sorted_entries(counted)
            else:
                newest = tables.sorted_entries(_counted_again(tables.split_table(old_items[match][1:])))
                del old_items[match], old_deaths[match]
            items, deaths = [tables.table(newest), *old_items], [(queue, reason), *old_deaths]
        found["x-death"] = tables.array(items)
        return tables.sorted_entries(list(found.items())), deaths


def is_cycle(queue: str, deaths: Deaths) -> bool:
    """Whether dead-lettering into `queue` closes a loop of automatic deaths (none of them `rejected`)."""
    for death in deaths:
        if death is None or death[1] == REJECTED:
            return False
        if death[0] == queue:
            return True
    return False


def _cc(headers: tables.Entries) -> list[str]:
    for key, value in headers:
        if key == "CC" and value[:1] == b"A":
            return [item for item in tables.decoded(value) if isinstance(item, str)]
    return []


def _counted_again(entry: tables.Entries) -> tables.Entries:
    values = dict(entry)
    count = tables.decoded(values["count"]) if "count" in values else 0
    values["count"] = tables.long(count + 1)
    return list(values.items())


def _death(item: bytes) -> tuple[str, str] | None:
    if item[:1] != b"F":
        return None
    values = dict(tables.split_table(item[1:]))
    queue = tables.decoded(values["queue"]) if "queue" in values else None
    reason = tables.decoded(values["reason"]) if "reason" in values else None
    return (queue, reason) if isinstance(queue, str) and isinstance(reason, str) else ("", "")
