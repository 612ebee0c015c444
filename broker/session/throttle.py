"""Blocking a publishing connection during a resource alarm, by RabbitMQ's rule (rabbit_reader's throttle).

A connection is blocked when it publishes while an alarm is set: the publish that arrives is handled,
then the server reads nothing more from it until every alarm has cleared. A connection that does not
publish (a consumer acknowledging, say) keeps being read, so queues can drain and memory come down; it
is blocked at its first publish under the alarm. The client hears `connection.blocked` with the reason
("low on memory", "low on disk") and later `connection.unblocked`, if it advertised the capability.
"""

from __future__ import annotations

from collections.abc import Callable

from leveret.amqp.connection import ServerConnection
from leveret.broker.alarms import blocked_reason


class PublisherThrottle:
    __slots__ = ("conn", "blocked", "on_unblocked")

    def __init__(self, conn: ServerConnection) -> None:
        self.conn = conn
        self.blocked = False
        self.on_unblocked: Callable[[], None] = lambda: None  # the server's reader waits for this

    def publish_received(self, alarms: frozenset[str]) -> None:
        """A publish arrived while `alarms` (not empty) are set."""
        if not self.blocked:
            self.blocked = True
            self.conn.send_blocked(blocked_reason(alarms))

    def alarms_changed(self, alarms: frozenset[str]) -> None:
        # A blocked connection stays blocked, without a second connection.blocked, until no alarm is left.
        if self.blocked and not alarms:
            self.blocked = False
            self.conn.send_unblocked()
            self.on_unblocked()
