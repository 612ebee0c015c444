"""At-least-once dead-lettering (x-dead-letter-strategy, quorum queues): the messages a queue dead-lettered
and still holds, until every queue they route to has them (RabbitMQ's rabbit_fifo_dlx).

The queue hands them out as a FORWARD effect; the executor routes each copy and, once every target queue
took it (and a durable target's log is fsynced), answers with the DEAD_LETTERED command, which settles the
message here (and in the source queue's log). A message with no route, or a target that refused it, stays
and is forwarded again every RETRY_INTERVAL, as RabbitMQ's worker retries on its timer.

Held messages are not ready (message_count leaves them out) but count towards the queue's length limits,
as in RabbitMQ; reject-publish then stops publishers while the targets are missing.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

from leveret.broker.queues.effects import FORWARD, Effect

if TYPE_CHECKING:
    from leveret.broker.message import Message
    from leveret.broker.queues.entry import Entry

RETRY_INTERVAL = 1.0  # seconds between forwards of a message not yet everywhere
FORWARD_BATCH = 2048  # at most this many messages per retry, so that a large outbox lets others run


class Outbox:
    __slots__ = ("held", "bytes", "retry_at", "_ids")

    def __init__(self) -> None:
        # id -> (the source queue's entry, None if it was never stored; the message as published; reason)
        self.held: dict[int, tuple[Entry | None, Message, str]] = {}
        self.bytes = 0  # body bytes held
        self.retry_at: float | None = None
        self._ids = itertools.count(1)

    def __len__(self) -> int:
        return len(self.held)

    def add(self, entries: list[Entry | None], messages: list[Message], reason: str, now: float) -> Effect:
        """Hold these dead-lettered messages; the effect that forwards them."""
        out = []
        for entry, message in zip(entries, messages, strict=True):
            dlx_id = next(self._ids)
            self.held[dlx_id] = (entry, message, reason)
            self.bytes += len(message.body)
            out.append((dlx_id, message, reason))
        if self.retry_at is None:
            self.retry_at = now + RETRY_INTERVAL
        return (FORWARD, out)

    def restore(self, entries: list[Entry], reasons: list[str], now: float) -> None:
        """Held when the broker stopped (read back from the source's log): forwarded again at the first
        retry, due now (the node's timers run once every queue and binding is back)."""
        for entry, reason in zip(entries, reasons, strict=True):
            self.held[next(self._ids)] = (entry, entry.message, reason)
            self.bytes += len(entry.message.body)
        if entries:
            self.retry_at = now

    def done(self, ids: list[int]) -> dict[str, list[Entry]]:
        """Every target has these: they leave; their stored entries, by reason, for the log."""
        settled: dict[str, list[Entry]] = {}
        for dlx_id in ids:
            held = self.held.pop(dlx_id, None)
            if held is None:
                continue  # forwarded twice (a retry crossed a slow fsync): settled already
            entry, message, reason = held
            self.bytes -= len(message.body)
            if entry is not None:
                settled.setdefault(reason, []).append(entry)
        if not self.held:
            self.retry_at = None
        return settled

    def retry(self, now: float) -> Effect | None:
        """If the retry time came, the effect that forwards what is still held (oldest first)."""
        if self.retry_at is None or self.retry_at > now:
            return None
        self.retry_at = now + RETRY_INTERVAL
        batch = itertools.islice(self.held.items(), FORWARD_BATCH)
        return (FORWARD, [(dlx_id, message, reason) for dlx_id, (_, message, reason) in batch])

    def clear(self) -> None:
        self.held.clear()
        self.bytes = 0
        self.retry_at = None
