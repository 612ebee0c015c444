"""A quorum queue's delivery count: how often each message came back (x-delivery-count, shown from its
first return, and on basic.get from its first delivery), and x-delivery-limit, past which a message goes
for good (dead-lettered with reason delivery_limit). A part of the queue's lifecycle (lifecycle.py),
there only for quorum queues."""

from __future__ import annotations

from leveret.amqp import tables
from leveret.amqp.properties import HEADERS, join_properties, split_properties
from leveret.broker.message import Message
from leveret.broker.queues.entry import TrackedEntry


def with_delivery_count(message: Message, count: int) -> Message:
    """The message as a quorum queue delivers it after `count` returns (as it is, if its headers are
    malformed)."""
    fields = split_properties(message.properties_raw)
    try:
        headers = dict(tables.split_table(fields[HEADERS])) if HEADERS in fields else {}
    except tables.TableError:
        return message
    headers["x-delivery-count"] = tables.long(count)
    fields[HEADERS] = tables.table_field(tables.sorted_entries(list(headers.items())))
    properties = join_properties(fields)
    return Message(message.exchange, message.routing_key, properties, message.body, message.names_raw)


class DeliveryCount:
    def __init__(self, limit: int | None) -> None:
        self.limit = limit  # x-delivery-limit, if any

    def returned(self, entries: list[TrackedEntry]) -> tuple[list[TrackedEntry], list[TrackedEntry]]:
        """Count one more return of each; (those kept, those past the limit)."""
        limit = self.limit
        kept, spent = [], []
        for entry in entries:
            entry.deliveries += 1
            if limit is not None and entry.deliveries > limit:
                spent.append(entry)
            else:
                entry.message = with_delivery_count(entry.published, entry.deliveries)
                kept.append(entry)
        return kept, spent

    def recovered(self, entry: TrackedEntry, count: int) -> None:
        """`entry` came back from the log with `count` returns."""
        entry.deliveries = count
        if count:
            entry.message = with_delivery_count(entry.published, count)

    def taken(self, entry: TrackedEntry) -> None:
        """basic.get took `entry`: it shows its count from the first one (unlike deliveries)."""
        if entry.message is entry.published:
            entry.message = with_delivery_count(entry.published, entry.deliveries)
