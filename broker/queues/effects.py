"""What a queue's commands produce, as data: the layer that runs the queue carries the effects out.

An effect is a tuple whose first item is its kind. The queue hands each one to its executor
(`Queue.run_effect`, the vhost's `execute`, broker/executor.py) as the command produces it, or, under
`Queue.apply`, returns them all to the caller instead: that is how a log is replayed, or (later) how a
replica follows its leader, without sending anything to anyone.
"""

from __future__ import annotations

from typing import Any

DELIVER = 1  # (DELIVER, consumer, entry): send the entry to the consumer (unacked, unless no-ack)
DEAD_LETTER = 2  # (DEAD_LETTER, messages, reason): republish to the queue's dead-letter exchange
ARM = 3  # (ARM, when): wake the queue at `when` (its next expiry, or its own), on the node's timers
DISARM = 4  # (DISARM,): the queue needs no timer any more
REMOVE = 5  # (REMOVE,): the queue expired unused: its vhost deletes it
# Paging (queues/paging.py), carried out by the node's pager:
PAGE_OUT = 6  # (PAGE_OUT, chunk): write the chunk's messages out of memory
LOAD = 7  # (LOAD, chunk): read the chunk back; the pager then calls `chunk_loaded`
RELEASE = 8  # (RELEASE, chunk): the chunk is back in memory or gone: its copy on disk may go
# At-least-once dead-lettering (a quorum queue's x-dead-letter-strategy): the queue keeps each message
# until the executor tells it (the DEAD_LETTERED command) that every target queue has it, durably.
FORWARD = 9  # (FORWARD, [(id, message, reason), ...]): dead-letter these, then report the ids done
# The durable log (queues/journal.py), under `Queue.apply` only: call the queue's journal with the record
# (the method's name and arguments). Carrying out an enqueued record returns the write position its
# confirm waits for (apply's own ENQUEUE reply is then 0). Outside apply the queue calls its journal
# itself, in place, one call less on the hot path.
JOURNAL = 10  # (JOURNAL, method, *arguments)
# The memory budget (queues/paging.py's Footprint): the queue's ready messages in memory passed the mark its
# pager set; the pager sums every queue's footprint and pages out if the node is over budget. A node's own
# accounting, not the queue's state: a replica's or a replay's queue has its own pager and marks.
FOOTPRINT = 11  # (FOOTPRINT,)
# basic.get on an empty head with chunks behind it (TAKE's reply HEAD_LOADING, queues/paging.py): the chunk
# it waited for is back in memory, or the queue dropped it (purge, delete): the getter asks again.
HEAD_READY = 12  # (HEAD_READY, getter): call getter.head_ready(queue)

NAMES = {
    DELIVER: "deliver", DEAD_LETTER: "dead-letter", ARM: "arm", DISARM: "disarm", REMOVE: "remove",
    PAGE_OUT: "page-out", LOAD: "load", RELEASE: "release", FORWARD: "forward", JOURNAL: "journal",
    FOOTPRINT: "footprint", HEAD_READY: "head-ready",
}  # fmt: skip

Effect = tuple[Any, ...]
