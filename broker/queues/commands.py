"""A queue's commands, as data: `Queue.apply(command, now)` runs one (broker/queues/queue.py).

A command is a tuple whose first item is its name; the rest are its arguments. Each has a method of the
same meaning on Queue, which the broker's own callers use directly (one call less on the hot path);
`apply` is the way in for whatever replays commands from a log.
"""

from __future__ import annotations

from typing import Any

ENQUEUE = "enqueue"  # (ENQUEUE, message) -> the store position its confirm waits for, None if refused
ATTACH = "attach"  # (ATTACH, consumer)
DETACH = "detach"  # (DETACH, consumer)
CREDIT = "credit"  # (CREDIT, consumer, n): it may take n more
SETTLE = "settle"  # (SETTLE, seqs): acked
REJECT = "reject"  # (REJECT, seqs): rejected without requeue (dead-lettered, if the queue does)
RETURN = "return"  # (RETURN, seqs): nacked or rejected with requeue, or given back by a closed channel
# (TAKE, getter=None) -> the next ready entry, now unacked (basic.get); None when there is none; or
# HEAD_LOADING when it is on disk: `getter` is told (HEAD_READY) once it is read back, and asks again.
TAKE = "take"
TICK = "tick"  # (TICK,): the deadline the queue asked for (ARM) came
PURGE = "purge"  # (PURGE,) -> how many ready messages went
DELETE = "delete"  # (DELETE,)
# From the node, after a failed commit: persistent publishes the store could not write, which were nacked.
DISCARD = "discard"  # (DISCARD, seqs): they leave the queue, and their retried records are settled
# From the executor: dead-lettered messages (FORWARD) every target queue now holds, durably if it is durable.
DEAD_LETTERED = "dead-lettered"  # (DEAD_LETTERED, ids)
# From the pager (queues/paging.py):
PAGE = "page"  # (PAGE, want): page out about `want` bytes of budget -> how much it did
LOADED = "loaded"  # (LOADED, chunk): a chunk asked for (LOAD) is back in memory

Command = tuple[Any, ...]
