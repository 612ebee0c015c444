"""message_stats: channels count in plain ints, the node keeps closed channels' counts, and rates are the
change over the last sample interval."""

from __future__ import annotations

from pamqp.commands import Basic, Channel, Confirm, Queue

from leveret.broker.management.rates import MessageRates, message_stats, node_counts
from leveret.broker.node import Node
from leveret.broker.session.connection import ConnectionSession
from leveret.config import Config
from tests.peers import ClientPeer


def test_counts_and_rates_follow_a_publishing_and_acking_client() -> None:
    node = Node(Config())
    now = [100.0]
    rates = MessageRates(node, lambda: now[0])
    client = ClientPeer(ConnectionSession(node, "client", from_loopback=True))
    client.handshake()
    client.open_channel(1)
    client.method(1, Confirm.Select())
    client.method(1, Queue.Declare(queue="q"))
    for _ in range(6):
        client.publish(1, b"body", routing_key="q")
    client.method(1, Basic.Consume(queue="q", consumer_tag="c"))
    client.method(1, Basic.Ack(delivery_tag=4, multiple=True))
    [channel] = [ch for session in node.connections for ch in session.channels.values()]
    assert node_counts(node) == (6, 6, 4, 6, 0)
    now[0] += 2.0
    rates.sample()
    assert rates.overview() == {
        "publish": 6,
        "publish_details": {"rate": 3.0},
        "deliver_get": 6,
        "deliver_get_details": {"rate": 3.0},
        "ack": 4,
        "ack_details": {"rate": 2.0},
        "confirm": 6,
        "confirm_details": {"rate": 3.0},
        "redeliver": 0,
        "redeliver_details": {"rate": 0.0},
    }
    assert rates.channel(channel)["ack"] == 4
    assert rates.vhost("/")["publish_details"] == {"rate": 3.0}
    now[0] += 5.0
    rates.sample()
    assert rates.overview()["publish_details"] == {"rate": 0.0}
    # A closed channel's counts stay in the node's totals.
    client.method(1, Channel.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0))
    assert node_counts(node) == (6, 6, 4, 6, 0)


def test_queues_and_exchanges_count_publishes_deliveries_acks_and_redeliveries() -> None:
    node = Node(Config())
    now = [100.0]
    rates = MessageRates(node, lambda: now[0])
    client = ClientPeer(ConnectionSession(node, "client", from_loopback=True))
    client.handshake()
    client.open_channel(1)
    for name in ("a", "b"):
        client.method(1, Queue.Declare(queue=name))
        client.method(1, Queue.Bind(queue=name, exchange="amq.fanout"))
    for _ in range(3):
        client.publish(1, b"body", exchange="amq.fanout")
        client.publish(1, b"body", routing_key="a")
    client.publish(1, b"body", routing_key="nowhere")
    client.publish(1, b"body", exchange="amq.direct", routing_key="nowhere")
    client.method(1, Basic.Consume(queue="a", consumer_tag="c"))  # 6 deliveries, tags 1-6
    client.method(1, Basic.Nack(delivery_tag=2, multiple=True, requeue=True))  # 1 and 2 come back
    client.method(1, Basic.Ack(delivery_tag=8, multiple=True))  # 3-6, and the redelivered 7 and 8
    client.method(1, Basic.Get(queue="b", no_ack=True))
    vhost = node.vhosts["/"]
    now[0] += 2.0
    rates.sample()
    assert rates.queue(vhost.queues["a"]) == {
        "publish": 6, "publish_details": {"rate": 0.0},
        "deliver_get": 8, "deliver_get_details": {"rate": 0.0},
        "ack": 6, "ack_details": {"rate": 0.0},
        "redeliver": 2, "redeliver_details": {"rate": 0.0},
    }  # fmt: skip
    assert rates.queue(vhost.queues["b"])["deliver_get"] == 1
    fanout = rates.exchange(vhost.exchanges["amq.fanout"])
    assert (fanout["publish_in"], fanout["publish_out"]) == (3, 6)
    default = rates.exchange(vhost.exchanges[""])
    assert (default["publish_in"], default["publish_out"]) == (4, 3)
    direct = rates.exchange(vhost.exchanges["amq.direct"])
    assert (direct["publish_in"], direct["publish_out"]) == (1, 0)
    assert rates.exchange(vhost.exchanges["amq.topic"]) == {}
    assert node_counts(node)[4] == 2  # the channel's redeliveries
    # Queues and exchanges are sampled when read: a rate is the change since a reading an interval ago.
    for _ in range(10):
        client.publish(1, b"body", routing_key="b")
    now[0] += 2.0
    assert rates.queue(vhost.queues["b"])["publish_details"] == {"rate": 0.0}  # too soon: the last rates
    now[0] += 3.0
    assert rates.queue(vhost.queues["b"])["publish_details"] == {"rate": 2.0}
    assert rates.exchange(vhost.exchanges[""])["publish_out_details"] == {"rate": 2.0}


def test_a_stat_shows_once_it_counted() -> None:
    assert message_stats((0, 0), (0.0, 0.0), ("publish_in", "publish_out")) == {}


async def test_http_publishes_and_gets_count_and_wait_out_an_alarm() -> None:
    import httpx
    import trio

    from leveret.broker.management.server import serve_management
    from leveret.config import Permission, User, hash_password

    users = (User("guest", hash_password("guest"), ("administrator",)),)
    node = Node(Config(users=users, permissions=(Permission("guest", "/"),)), clock=trio.current_time)
    node.vhosts["/"].declare_queue(
        "q", owner=None, durable=False, exclusive=False, auto_delete=False, arguments={}
    )
    body = {"routing_key": "q", "payload": "x", "payload_encoding": "string", "properties": {}}
    async with trio.open_nursery() as nursery:
        [url] = await nursery.start(serve_management, node, "127.0.0.1", 0)
        async with httpx.AsyncClient(base_url=url, auth=("guest", "guest")) as http:
            node.alarms.active = frozenset({"memory"})
            answers = []

            async def publish() -> None:
                answers.append((await http.post("/api/exchanges/%2F/amq.default/publish", json=body)).json())

            nursery.start_soon(publish)
            await trio.sleep(0.5)
            assert answers == [] and node.vhosts["/"].queues["q"].message_count == 0
            node.alarms.active = frozenset()
            await trio.sleep(0.5)
            assert answers == [{"routed": True}]
            got = {"count": 5, "ackmode": "ack_requeue_false", "encoding": "auto"}
            assert len((await http.post("/api/queues/%2F/q/get", json=got)).json()) == 1
        nursery.cancel_scope.cancel()
    assert node_counts(node) == (1, 1, 1, 0, 0)
