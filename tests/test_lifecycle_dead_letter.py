"""Dead-lettering: reasons, the x-death header as RabbitMQ 3.10 writes it (values and wire types), cycles."""

from __future__ import annotations

import datetime

from pamqp.commands import Basic, Exchange, Queue

from leveret.amqp import tables
from leveret.amqp.properties import properties_from_dict
from leveret.broker.message import Message
from leveret.broker.queues.dead_letter import Death, is_cycle
from tests.lifecycle_support import clocked_node, declare_queue, fanout_to, get, raw_headers
from tests.test_session import connect


def test_rejected_message_carries_x_death_as_rabbitmq_writes_it() -> None:
    node, _ = clocked_node()
    client = connect(node)
    fanout_to(client, "dlx", "dead")
    declare_queue(client, "work", **{"x-dead-letter-exchange": "dlx"})
    client.publish(1, b"x", routing_key="work", properties=Basic.Properties(headers={"app": "a"}))
    method, _, _ = get(client, "work", no_ack=False)
    client.method(1, Basic.Reject(delivery_tag=method.delivery_tag, requeue=False))
    method, properties, body = get(client, "dead")
    assert (method.exchange, method.routing_key, body) == ("dlx", "work", b"x")
    headers = properties.headers
    assert list(headers) == ["app", "x-death", "x-first-death-exchange", "x-first-death-queue",
                             "x-first-death-reason"]
    (death,) = headers["x-death"]
    assert list(death) == ["count", "reason", "queue", "time", "exchange", "routing-keys"]
    assert {k: v for k, v in death.items() if k != "time"} == {
        "count": 1, "reason": "rejected", "queue": "work", "exchange": "", "routing-keys": ["work"]
    }
    assert abs(death["time"] - datetime.datetime.now(datetime.UTC)) < datetime.timedelta(seconds=5)
    assert (headers["x-first-death-reason"], headers["x-first-death-queue"]) == ("rejected", "work")


def test_x_death_keeps_rabbitmq_wire_types_and_the_client_headers_their_own() -> None:
    node, _ = clocked_node()
    client = connect(node)
    fanout_to(client, "dlx", "dead")
    declare_queue(client, "work", **{"x-dead-letter-exchange": "dlx", "x-message-ttl": 0})
    headers = {"big": 2**40, "small": 5}
    properties = properties_from_dict({"headers": headers})
    client.publish(1, b"x", routing_key="work", properties=Basic.Properties(headers=headers))
    raw = raw_headers(node.vhosts["/"].queues["dead"])
    sent = dict(tables.split_table(properties[2:]))  # the publisher's own encoding of its headers
    assert (raw["big"], raw["small"]) == (sent["big"], sent["small"])
    (entry,) = tables.split_array(raw["x-death"])
    fields = dict(tables.split_table(entry[1:]))
    assert fields["count"] == tables.long(1)  # a 64-bit long, as Java clients cast it
    assert fields["time"][:1] == b"T"
    assert fields["routing-keys"] == tables.array([tables.longstr("work")])


def test_expired_copy_loses_its_expiration_and_records_it() -> None:
    node, clock = clocked_node()
    client = connect(node)
    fanout_to(client, "dlx", "dead")
    declare_queue(client, "work", **{"x-dead-letter-exchange": "dlx"})
    client.publish(1, b"x", routing_key="work", properties=Basic.Properties(expiration="100"))
    clock.advance(0.2)
    _, properties, _ = get(client, "dead")
    assert properties.expiration is None
    (death,) = properties.headers["x-death"]
    assert (death["reason"], death["original-expiration"]) == ("expired", "100")


def test_dead_letter_routing_key_replaces_the_key_and_drops_cc() -> None:
    node, _ = clocked_node()
    client = connect(node)
    client.method(1, Exchange.Declare(exchange="dlx", exchange_type="direct"))
    declare_queue(client, "dead")
    client.method(1, Queue.Bind(queue="dead", exchange="dlx", routing_key="to-dead"))
    declare_queue(client, "work", **{"x-dead-letter-exchange": "dlx", "x-dead-letter-routing-key": "to-dead"})
    client.publish(1, b"x", routing_key="work", properties=Basic.Properties(headers={"CC": ["other"]}))
    method, _, _ = get(client, "work", no_ack=False)
    client.method(1, Basic.Nack(delivery_tag=method.delivery_tag, requeue=False))
    method, properties, _ = get(client, "dead")
    assert method.routing_key == "to-dead"
    assert "CC" not in properties.headers
    assert properties.headers["x-death"][0]["routing-keys"] == ["work", "other"]


def test_the_default_exchange_as_dead_letter_exchange() -> None:
    node, _ = clocked_node()
    client = connect(node)
    declare_queue(client, "dead")
    declare_queue(client, "work", **{"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "dead",
                                     "x-max-length": 1})
    client.publish(1, b"first", routing_key="work")
    client.publish(1, b"second", routing_key="work")
    _, properties, body = get(client, "dead")
    assert body == b"first" and properties.headers["x-death"][0]["reason"] == "maxlen"


def test_a_second_death_in_the_same_queue_counts_up_and_comes_first() -> None:
    node, clock = clocked_node()
    client = connect(node)
    client.method(1, Exchange.Declare(exchange="dlx", exchange_type="direct"))
    # a (TTL) -> dlx -> b; a rejection in b goes back to a: a cycle with a client's reject in it.
    declare_queue(client, "a", **{"x-message-ttl": 50, "x-dead-letter-exchange": "dlx",
                                  "x-dead-letter-routing-key": "b"})
    declare_queue(client, "b", **{"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "a"})
    client.method(1, Queue.Bind(queue="b", exchange="dlx", routing_key="b"))
    client.publish(1, b"x", routing_key="a")
    clock.advance(0.1)
    method, properties, _ = get(client, "b", no_ack=False)
    first_time = properties.headers["x-death"][0]["time"]
    client.method(1, Basic.Reject(delivery_tag=method.delivery_tag, requeue=False))
    clock.advance(0.1)
    method, properties, _ = get(client, "b", no_ack=False)
    deaths = properties.headers["x-death"]
    assert [(d["queue"], d["reason"], d["count"]) for d in deaths] == [
        ("a", "expired", 2), ("b", "rejected", 1)
    ]
    assert list(deaths[0]) == ["count", "exchange", "queue", "reason", "routing-keys", "time"]
    assert deaths[0]["time"] == first_time
    assert properties.headers["x-first-death-reason"] == "expired"


def test_a_fully_automatic_cycle_is_dropped() -> None:
    node, clock = clocked_node()
    client = connect(node)
    declare_queue(client, "loop", **{"x-message-ttl": 10, "x-dead-letter-exchange": "",
                                     "x-dead-letter-routing-key": "loop"})
    client.publish(1, b"x", routing_key="loop")
    clock.advance(0.1)
    assert node.vhosts["/"].queues["loop"].message_count == 0


def test_a_rejected_message_may_go_back_to_its_own_queue() -> None:
    node, _ = clocked_node()
    client = connect(node)
    declare_queue(client, "self", **{"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "self"})
    client.publish(1, b"x", routing_key="self")
    method, _, _ = get(client, "self", no_ack=False)
    client.method(1, Basic.Reject(delivery_tag=method.delivery_tag, requeue=False))
    _, properties, _ = get(client, "self")
    assert properties.headers["x-death"][0]["reason"] == "rejected"


def test_cycle_rules() -> None:
    assert is_cycle("a", [("a", "expired")])
    assert is_cycle("a", [("b", "maxlen"), ("a", "expired")])
    assert not is_cycle("a", [("b", "rejected"), ("a", "expired")])
    assert not is_cycle("a", [("a", "rejected")])
    assert not is_cycle("a", [("b", "expired")])
    assert not is_cycle("a", [None, ("a", "expired")])


def test_a_missing_dead_letter_exchange_drops_the_message() -> None:
    node, _ = clocked_node()
    client = connect(node)
    declare_queue(client, "work", **{"x-dead-letter-exchange": "missing"})
    client.publish(1, b"x", routing_key="work")
    method, _, _ = get(client, "work", no_ack=False)
    client.method(1, Basic.Reject(delivery_tag=method.delivery_tag, requeue=False))
    assert node.vhosts["/"].queues["work"].message_count == 0


def test_an_x_death_that_is_not_an_array_starts_over() -> None:
    raw = properties_from_dict({"headers": {"x-death": "mangled by a republisher"}})
    copy, deaths = Death("expired", "q", 0).copy(Message("", "q", raw, b""), "dlx", None)
    assert deaths == [("q", "expired")]
    assert copy.headers["x-death"][0]["count"] == 1
    assert "x-first-death-queue" not in copy.headers


def test_a_message_with_malformed_headers_is_dropped_not_dead_lettered() -> None:
    node, clock = clocked_node()
    client = connect(node)
    fanout_to(client, "dlx", "dead")
    declare_queue(client, "work", **{"x-dead-letter-exchange": "dlx", "x-message-ttl": 10})
    queue = node.vhosts["/"].queues["work"]
    # Header flag, then a table of one entry whose value has the unknown type tag "Z".
    queue.enqueue(Message("", "work", b"\x20\x00\x00\x00\x00\x03\x01kZ", b"x"))
    clock.advance(0.1)
    assert queue.message_count == 0
    assert node.vhosts["/"].queues["dead"].message_count == 0
