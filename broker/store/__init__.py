"""The durable store: per-queue message logs with group commit, and the definitions file.

Synchronous, on plain files. The event loop thread appends (cheap, in memory) and drives group commit;
the blocking parts run in a worker thread: `Store(...)`, `Store.open_queue` (creates a directory),
`QueueLog.recover`, `SyncBatch.run` and `DefinitionsStore.save`. Everything else belongs to the loop
thread. One persistence task commits, one batch at a time:

    while (batch := store.begin_sync()) is not None:
        await trio.to_thread.run_sync(batch.run)
        durable = store.complete(batch)
        if batch.error:    # nack the publishes whose last position is in batch.new_positions
            ...            # and back off: the next batch retries the failed writes first
        ...                # ack the publishes whose last position is <= durable

Paging (broker/pager.py) reads records back by where they are (`reader.py`: a queue log's enqueue record
by its location, a page file's run) and keeps messages no log holds in `pages.py`; both blocking, in the
pager's worker thread.
"""

from .definitions import DefinitionsError, DefinitionsStore
from .group_commit import SyncBatch
from .queue_log import QueueLog, StoredMessage
from .store import DEFAULT_MAX_SEGMENT_SIZE, Store

__all__ = [
    "DEFAULT_MAX_SEGMENT_SIZE",
    "DefinitionsError",
    "DefinitionsStore",
    "QueueLog",
    "StoredMessage",
    "Store",
    "SyncBatch",
]
