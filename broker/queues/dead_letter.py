"""Dead-lettering: a message a queue removes (rejected, expired, maxlen, delivery_limit) is republished
to the queue's dead-letter exchange with its story in the `x-death` header, as RabbitMQ 3.10 writes it.

At most once: the copy is routed and enqueued like a publish without confirms; a missing exchange drops
it. A message that would come back to a queue it died in, through deaths none of which was a client's
reject, is dropped there (the cycle would never end).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from leveret.amqp import tables
from leveret.amqp.properties import EXPIRATION, HEADERS, join_properties, split_properties
from leveret.broker.message import Message

if TYPE_CHECKING:
    from leveret.broker.queues.host import QueueHost
    from leveret.broker.queues.settings import QueueSettings

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
    now = int(wall_clock())
    for message in messages:
        copy, deaths = dead_lettered_copy(
            message, reason, queue_name, exchange.name, settings.dead_letter_routing_key, now
        )
        for target in host.route(exchange, copy):
            if reason == REJECTED or not is_cycle(target.name, deaths):
                target.enqueue(copy)


def dead_lettered_copy(
    message: Message, reason: str, queue: str, exchange: str, routing_key: str | None, now: int
) -> tuple[Message, Deaths]:
    """The message as it leaves for `exchange`: x-death updated, per-message expiration removed, routed
    by `routing_key` when the queue names one (and then without its CC header), else by its own."""
    fields = split_properties(message.properties_raw)
    headers = tables.split_table(fields[HEADERS]) if HEADERS in fields else []
    routing_keys = [message.routing_key] + _cc(headers)
    info = [
        ("reason", tables.longstr(reason)),
        ("queue", tables.longstr(queue)),
        ("time", tables.timestamp(now)),
        ("exchange", tables.longstr(message.exchange)),
        ("routing-keys", tables.array([tables.longstr(key) for key in routing_keys])),
    ]
    if message.expiration is not None:
        info.append(("original-expiration", tables.longstr(message.expiration)))
    headers, deaths = _record_death(headers, info, queue, reason, message.exchange)
    if routing_key is not None:
        headers = [entry for entry in headers if entry[0] != "CC"]
    fields[HEADERS] = tables.table_field(headers)
    fields.pop(EXPIRATION, None)
    properties = join_properties(fields)
    return Message(exchange, routing_key if routing_key is not None else message.routing_key, properties,
                   message.body), deaths


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


def _record_death(
    headers: tables.Entries, info: tables.Entries, queue: str, reason: str, exchange: str
) -> tuple[tables.Entries, Deaths]:
    """Headers with this death recorded. A first one also sets x-first-death-*; a repeat of an earlier
    (queue, reason) counts up that entry (which keeps its first time, exchange and keys) and moves it
    first."""
    found = dict(headers)
    x_death = found.get("x-death")
    counted = [("count", tables.long(1)), *info]
    if x_death is None:
        found["x-first-death-reason"] = tables.longstr(reason)
        found["x-first-death-queue"] = tables.longstr(queue)
        found["x-first-death-exchange"] = tables.longstr(exchange)
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
