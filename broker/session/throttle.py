"""Blocking a publishing connection during a resource alarm, by RabbitMQ's rule (rabbit_reader's throttle).

A connection is blocked when it publishes while an alarm is set. RabbitMQ blocks on the publish's content
header and reads nothing more, not even the body: that publish is routed only once every alarm has
cleared, unless it has no body (then the header completed it and it is routed at once). Leveret holds
the publish back the same way, and nothing received after it is handled or read until then. A connection
that does not publish (a consumer acknowledging, say) keeps being read, so queues can drain and memory
come down. The client hears `connection.blocked` with the reason ("low on memory", "low on disk") and
later `connection.unblocked`, if it advertised the capability.
"""

from __future__ import annotations

from collections.abc import Callable

from leveret.amqp.connection import ServerConnection
from leveret.amqp.events import ContentReceived
from leveret.broker.alarms import blocked_reason


class PublisherThrottle:
    __slots__ = ("conn", "blocked", "held", "on_unblocked")

    def __init__(self, conn: ServerConnection) -> None:
        self.conn = conn
        self.blocked = False
        self.held: ContentReceived | None = None  # the publish that waits for the alarms to clear
        self.on_unblocked: Callable[[], None] = lambda: None  # the server's reader waits for this

    def hold(self, publish: ContentReceived, alarms: frozenset[str]) -> bool:
        """A publish arrived while `alarms` (not empty) are set: block. True if it must wait (`held`)."""
        if not self.blocked:
            self.blocked = True
            self.conn.send_blocked(blocked_reason(alarms))
        if not publish.body:
            return False
        self.held = publish
        return True

    def alarms_changed(self, alarms: frozenset[str]) -> None:
        # A blocked connection stays blocked, without a second connection.blocked, until no alarm is left.
        if self.blocked and not alarms:
            self.blocked = False
            self.conn.send_unblocked()
            self.on_unblocked()
