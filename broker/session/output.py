"""The bound on a connection's output waiting for its socket.

A consumer that stops reading its socket must not make the broker buffer everything routed to it: past
the high water mark, that connection's consumers take no more messages (they stay in their queues, where
the pager may page them out), and take them again once the socket has drained below the low water mark.
"""

from leveret.broker.queues.subscriber import DELIVERY_OVERHEAD

__all__ = ["DELIVERY_OVERHEAD", "OUTBOX_HIGH_WATER", "OUTBOX_LOW_WATER"]

# Bytes of deliveries not yet taken by the socket past which the connection's consumers stop.
OUTBOX_HIGH_WATER = 4 * 1024 * 1024
# Below this, once stopped, they resume: a gap, so that they do not stop and start with every write.
OUTBOX_LOW_WATER = 1024 * 1024
