"""What a queue hands its lifecycle part (broker/queues/lifecycle.py's Lifecycle): the operations that TTL,
queue expiry, limits, dead-lettering, priorities, single active consumer and delivery counting change.

A Protocol, so that queue.py needs no import of lifecycle.py (which builds on it).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from leveret.broker.message import Message
    from leveret.broker.queues.entry import Entry
    from leveret.broker.queues.outbox import Outbox
    from leveret.broker.queues.paging import Chunk, HeadGetter, HeadLoading
    from leveret.broker.queues.settings import QueueSettings
    from leveret.broker.queues.subscriber import Subscriber


class LifecyclePart(Protocol):
    @property
    def settings(self) -> QueueSettings: ...

    @property
    def outbox(self) -> Outbox | None:
        """Dead-lettered messages held until their targets have them (at-least-once), if the queue does."""

    @property
    def pages(self) -> bool:
        """Whether the ready list may page out (a priority queue's stays in memory)."""

    # The queue's operations, in full.
    def enqueue(self, message: Message) -> int | None: ...

    def restore(
        self,
        entries: Iterable[Entry],
        next_seq: int,
        expires_in: list[float | None] | None = None,
        returns: list[int] | None = None,
    ) -> None: ...

    def take(self, getter: HeadGetter | None = None) -> Entry | HeadLoading | None: ...

    def requeue(self, seqs: Iterable[int]) -> None: ...

    def touch(self) -> None: ...

    def tick(self) -> None: ...

    def on_deadline(self, now: float) -> None: ...

    def add_consumer(self, consumer: Subscriber) -> None: ...

    def remove_consumer(self, consumer: Subscriber) -> None: ...

    def deliver_ready(self) -> None: ...

    def settings_changed(self) -> None:
        """Follow the queue's effective arguments as they are now (a policy changed)."""

    # What it adds to the queue's own handling.
    def rejected(self, entries: list[Entry]) -> None: ...

    def deleted(self) -> None: ...

    def dead_lettered(self, ids: list[int]) -> None: ...

    def clear_head(self) -> list[Entry]: ...

    def remove_from_head(self, seqs: set[int]) -> list[Entry]: ...

    def take_back_of_head(self, want: int, keep: int) -> tuple[list[Entry], list[int]]: ...

    def new_chunk(self, entries: list[Entry], body_bytes: int) -> Chunk: ...

    def tracked_from_chunk(self, chunk: Chunk, entries: list[Entry]) -> list[Entry]: ...

    def add_to_head(self, entries: list[Entry]) -> None: ...

    def unpage(self) -> None: ...

    def chunk_loaded(self, chunk: Chunk) -> None: ...

    def chunks_restored(self) -> None: ...

    def restore_levels(self, chunks: dict[int, list[Chunk]]) -> None: ...

    def restore_held(self, entries: list[Entry], reasons: list[str]) -> None: ...
