"""The durable store: per-queue message logs with group commit, and the definitions file.

Synchronous and blocking on files: the server runs `SyncBatch.run`, `QueueLog.recover`, `Store(...)`,
`Store.open_queue` and `DefinitionsStore.save` in a worker thread.
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
