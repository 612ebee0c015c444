"""Redeclaring a queue: RabbitMQ's equivalence rules (rabbit_amqqueue:assert_equivalence; 3.10 = 3.13).

- Exclusivity is not an equivalence argument but an access check, made first and strictly: a redeclare must
  come from the owner with exclusive set, or, for a queue no connection owns, without it. Anything else,
  the owner's own redeclare with exclusive=false included, is 405 RESOURCE_LOCKED. A passive declare only
  needs access (405 from another connection, fine from the owner).
- An exclusive queue is never durable: durable on an exclusive declare is ignored, on both declarations.
- Then durable, auto_delete, and the arguments of the queue's type, in its order (rabbit_classic_queue's
  capabilities): values of one type class compare by value; a difference names both values, bare when
  both are there, typed when one is missing; a missing x-queue-type equals 'classic'. Other arguments
  (x-foo) are not compared.
"""

from __future__ import annotations

from typing import Any

import pika
import pytest
from pika.exceptions import ChannelClosedByBroker

from interop.brokers import Broker
from interop.clients import pika_connection, unique

LOCKED = (
    "405 RESOURCE_LOCKED - cannot obtain exclusive access to locked queue 'Q' in vhost '/'. It could be "
    "originally declared on another connection or the exclusive property value does not match that of the "
    "original declaration."
)


def inequivalent(arg: str, received: str, current: str) -> str:
    return (
        f"406 PRECONDITION_FAILED - inequivalent arg '{arg}' for queue 'Q' in vhost '/': received {received} "
        f"but current is {current}"
    )


EXCLUSIVE: dict[str, Any] = {"exclusive": True}
AUTO_DELETE: dict[str, Any] = {"auto_delete": True}
DURABLE: dict[str, Any] = {"durable": True}


def given(base: dict[str, Any], **arguments: Any) -> dict[str, Any]:
    """`base` with these queue arguments (x_message_ttl for x-message-ttl)."""
    return {**base, "arguments": {key.replace("_", "-"): value for key, value in arguments.items()}}


# (first declaration, by A), (who redeclares, their declaration), the outcome ("ok" or "code text").
CASES: list[tuple[dict[str, Any], str, dict[str, Any], str]] = [
    # Exclusivity: an access check, not an argument.
    (EXCLUSIVE, "A", {"exclusive": False}, LOCKED),
    (EXCLUSIVE, "A", {"exclusive": False, "durable": True}, LOCKED),
    (given(EXCLUSIVE, x_message_ttl=1000), "A", given({"exclusive": False}, x_message_ttl=2000), LOCKED),
    (AUTO_DELETE, "A", {**EXCLUSIVE, **AUTO_DELETE}, LOCKED),
    (AUTO_DELETE, "B", {**EXCLUSIVE, **AUTO_DELETE}, LOCKED),
    (EXCLUSIVE, "B", EXCLUSIVE, LOCKED),
    (EXCLUSIVE, "B", {"exclusive": False}, LOCKED),
    (EXCLUSIVE, "B", {**EXCLUSIVE, **DURABLE}, LOCKED),
    (EXCLUSIVE, "B", {"passive": True}, LOCKED),
    (EXCLUSIVE, "A", {"passive": True}, "ok"),
    (EXCLUSIVE, "A", EXCLUSIVE, "ok"),
    # An exclusive queue is never durable.
    (EXCLUSIVE, "A", {**EXCLUSIVE, **DURABLE}, "ok"),
    ({**EXCLUSIVE, **DURABLE}, "A", EXCLUSIVE, "ok"),
    # durable and auto_delete.
    (EXCLUSIVE, "A", {**EXCLUSIVE, **AUTO_DELETE}, inequivalent("auto_delete", "'true'", "'false'")),
    ({**DURABLE, **AUTO_DELETE}, "A", AUTO_DELETE, inequivalent("durable", "'false'", "'true'")),
    (AUTO_DELETE, "B", DURABLE, inequivalent("durable", "'true'", "'false'")),
    (AUTO_DELETE, "B", {}, inequivalent("auto_delete", "'false'", "'true'")),
    # Arguments: bare values when both are there, typed when one is missing.
    (given(EXCLUSIVE, x_message_ttl=1000), "A", given(EXCLUSIVE, x_message_ttl=2000),
     inequivalent("x-message-ttl", "'2000'", "'1000'")),
    (given(EXCLUSIVE, x_message_ttl=1000), "A", EXCLUSIVE,
     inequivalent("x-message-ttl", "none", "the value '1000' of type 'signedint'")),
    (AUTO_DELETE, "B", given(AUTO_DELETE, x_max_length=5),
     inequivalent("x-max-length", "the value '5' of type 'signedint'", "none")),
    (given(AUTO_DELETE, x_max_length=5), "B", given(AUTO_DELETE, x_max_length=2**40),
     inequivalent("x-max-length", "'1099511627776'", "'5'")),
    (given(AUTO_DELETE, x_max_priority=5), "B", given(AUTO_DELETE, x_max_priority="5"),
     inequivalent("x-max-priority", "'5'", "'5'")),
    (given(AUTO_DELETE, x_single_active_consumer=True), "B", given(AUTO_DELETE, x_single_active_consumer=1),
     inequivalent("x-single-active-consumer", "'1'", "'true'")),
    (given(AUTO_DELETE, x_queue_mode="lazy"), "B", given(AUTO_DELETE, x_queue_mode="default"),
     inequivalent("x-queue-mode", "'default'", "'lazy'")),
    (given(AUTO_DELETE, x_queue_mode="lazy"), "B", AUTO_DELETE,
     inequivalent("x-queue-mode", "none", "the value 'lazy' of type 'longstr'")),
    (given(AUTO_DELETE, x_max_length=5), "B", given(AUTO_DELETE, x_max_length={"a": 1}),
     inequivalent("x-max-length", """'[{<<"a">>,signedint,1}]'""", "'5'")),
    (given(AUTO_DELETE, x_max_length=5), "B", given(AUTO_DELETE, x_max_length=[1, 2]),
     inequivalent("x-max-length", "'[{signedint,1},{signedint,2}]'", "'5'")),
    # The first difference in the queue type's order: x-expires comes before x-message-ttl.
    (given(AUTO_DELETE, x_message_ttl=1000, x_expires=5000), "B",
     given(AUTO_DELETE, x_message_ttl=2000, x_expires=6000), inequivalent("x-expires", "'6000'", "'5000'")),
    # x-queue-type: missing is classic.
    (given(AUTO_DELETE, x_queue_type="classic"), "B", AUTO_DELETE, "ok"),
    (AUTO_DELETE, "B", given(AUTO_DELETE, x_queue_type="classic"), "ok"),
    (given(DURABLE, x_queue_type="quorum"), "B", DURABLE,
     inequivalent("x-queue-type", "none", "the value 'quorum' of type 'longstr'")),
    (given(DURABLE, x_queue_type="quorum"), "B", given(DURABLE, x_queue_type="classic"),
     inequivalent("x-queue-type", "'classic'", "'quorum'")),
    # Arguments outside the queue type's list are not compared.
    (given(EXCLUSIVE, x_foo=1), "A", given(EXCLUSIVE, x_foo=2), "ok"),
]


def declare(connection: pika.BlockingConnection, name: str, options: dict[str, Any]) -> str:
    channel = connection.channel()
    try:
        channel.queue_declare(name, **options)
    except ChannelClosedByBroker as closed:
        assert connection.is_open, "a declare error must close only the channel"
        return f"{closed.reply_code} {closed.reply_text}".replace(name, "Q")
    channel.close()
    return "ok"


@pytest.mark.parametrize(("first", "who", "second", "outcome"), CASES)
def test_redeclare(
    broker: Broker, first: dict[str, Any], who: str, second: dict[str, Any], outcome: str
) -> None:
    name = unique("equivalence")
    with pika_connection(broker.url) as owner, pika_connection(broker.url) as other:
        assert declare(owner, name, first) == "ok"
        assert declare(owner if who == "A" else other, name, second) == outcome
        owner.channel().queue_delete(name)

