"""The management API in process: a node served on trio (AMQP and HTTP listeners on loopback), real HTTP
requests with httpx and a real pika client in a worker thread."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pika
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from leveret.broker.management.auth import NotAuthorised, basic_credentials, login
from leveret.broker.management.server import serve_management
from leveret.broker.node import Node
from leveret.broker.server.listener import serve_amqp
from leveret.config import Config, Permission, User, hash_password

GUEST = ("guest", "guest")
NOT_FOUND = {"error": "Object Not Found", "reason": "Not Found"}
USERS = (
    User("guest", hash_password("guest"), ("administrator",), loopback_only=True),
    User("watcher", hash_password("watch"), ("monitoring",)),
    User("plain", hash_password("plain")),
)


@dataclass
class Served:
    node: Node
    amqp_port: int
    http: httpx.AsyncClient

    def pika(self) -> pika.BlockingConnection:
        return pika.BlockingConnection(pika.URLParameters(f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/"))


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    config = Config(users=USERS, permissions=(Permission("guest", "/"), Permission("plain", "/")))
    node = Node(config, clock=trio.current_time)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(serve_amqp, node, "127.0.0.1", 0)
        binds = await nursery.start(serve_management, node, "127.0.0.1", 0)
        async with httpx.AsyncClient(base_url=binds[0], auth=GUEST) as http:
            yield Served(node, listeners[0].socket.getsockname()[1], http)
        nursery.cancel_scope.cancel()


async def test_credentials_are_checked_as_rabbitmq_does(served: Served) -> None:
    anonymous = await served.http.get("/api/overview", auth=None)
    assert anonymous.status_code == 401 and anonymous.content == b""
    assert anonymous.headers["www-authenticate"] == 'Basic realm="RabbitMQ Management"'
    wrong = await served.http.get("/api/overview", auth=("guest", "nope"))
    assert (wrong.status_code, wrong.json()) == (401, {"error": "not_authorized", "reason": "Login failed"})
    untagged = await served.http.get("/api/overview", auth=("plain", "plain"))
    assert untagged.status_code == 401
    assert untagged.json() == {"error": "not_authorised", "reason": "Not management user"}
    users = await served.http.get("/api/users", auth=("watcher", "watch"))
    assert users.json() == {"error": "not_authorised", "reason": "Not administrator user"}
    assert [u["name"] for u in (await served.http.get("/api/users")).json()] == ["guest", "plain", "watcher"]
    assert (await served.http.get("/api/whoami")).json() == {"name": "guest", "tags": ["administrator"]}


def test_a_loopback_only_user_is_refused_from_elsewhere() -> None:
    users = {u.name: u for u in USERS}
    header = "Basic " + base64.b64encode(b"guest:guest").decode()
    assert login(users, header, "127.0.0.1").name == "guest"
    assert login(users, header, "::1").name == "guest"
    with pytest.raises(NotAuthorised) as refused:
        login(users, header, "192.0.2.7")
    assert refused.value.body == {"error": "not_authorised", "reason": "User can only log in via localhost"}
    assert basic_credentials("Bearer abc") is None
    assert basic_credentials("Basic !!!") is None


async def test_unknown_objects_and_write_methods(served: Served) -> None:
    for path in ("/api/queues/%2F/missing", "/api/vhosts/missing", "/api/exchanges/%2F/missing", "/nothing"):
        response = await served.http.get(path)
        assert (response.status_code, response.json()) == (404, NOT_FOUND)
    for method in ("PUT", "DELETE"):
        response = await served.http.request(method, "/api/overview")
        assert response.status_code == 405 and "GET" in response.headers["allow"]
    response = await served.http.post("/api/queues/%2F/missing")
    assert response.status_code == 405 and set(response.headers["allow"].split(", ")) >= {
        "GET",
        "PUT",
        "DELETE",
    }


async def test_queue_counts_connections_and_metrics_follow_a_pika_client(served: Served) -> None:
    connection = await trio.to_thread.run_sync(served.pika)
    channel = await trio.to_thread.run_sync(connection.channel)

    def publish_and_take_one() -> None:
        channel.queue_declare("orders", durable=False, arguments={"x-max-priority": 3})
        for index in range(4):
            channel.basic_publish("", "orders", f"order {index}".encode())
        channel.basic_get("orders", auto_ack=False)
        channel.queue_declare("watched")
        channel.basic_consume("watched", lambda *_: None, consumer_tag="watcher-1")

    await trio.to_thread.run_sync(publish_and_take_one)
    try:
        queue = (await served.http.get("/api/queues/%2F/orders")).json()
        assert (queue["messages"], queue["messages_ready"], queue["messages_unacknowledged"]) == (4, 3, 1)
        assert queue["arguments"] == {"x-max-priority": 3} and queue["consumers"] == 0
        assert queue["state"] == "running" and queue["durable"] is False and queue["exclusive"] is False

        [conn] = (await served.http.get("/api/connections")).json()
        assert conn["user"] == "guest" and conn["port"] == served.amqp_port and conn["channels"] == 1
        assert conn["client_properties"]["product"] == "Pika Python Client Library"
        [ch] = (await served.http.get("/api/channels")).json()
        assert ch["name"] == f"{conn['name']} (1)" and ch["messages_unacknowledged"] == 1
        [consumer] = (await served.http.get("/api/consumers")).json()
        assert consumer["consumer_tag"] == "watcher-1"
        assert consumer["queue"] == {"name": "watched", "vhost": "/"}

        overview = (await served.http.get("/api/overview")).json()
        assert overview["object_totals"]["queues"] == 2 and overview["object_totals"]["consumers"] == 1
        assert overview["queue_totals"] == {"messages": 4, "messages_ready": 3, "messages_unacknowledged": 1}

        bindings = (await served.http.get("/api/bindings/%2F")).json()
        assert {(b["source"], b["destination"], b["routing_key"]) for b in bindings} == {
            ("", "orders", "orders"),
            ("", "watched", "watched"),
        }

        # Unauthenticated, as RabbitMQ's: aggregated over the node, no queue or vhost named.
        aggregated = await served.http.get("/metrics", auth=None)
        assert "orders" not in aggregated.text and 'vhost="' not in aggregated.text
        families = text_string_to_metric_families(aggregated.text)
        totals = {s.name: s.value for family in families for s in family.samples}
        assert totals["rabbitmq_queue_messages_ready"] == 3
        assert totals["rabbitmq_queue_messages_unacked"] == 1
        assert totals["rabbitmq_queue_consumers"] == 1
        scrape = await served.http.get("/metrics/per-object", auth=None)
        samples = {
            (s.name, s.labels.get("queue")): s.value
            for family in text_string_to_metric_families(scrape.text)
            for s in family.samples
        }
        assert samples[("rabbitmq_queue_messages_ready", "orders")] == 3
        assert samples[("rabbitmq_queue_messages_unacked", "orders")] == 1
        assert samples[("rabbitmq_queue_consumers", "watched")] == 1
        assert samples[("rabbitmq_connections", None)] == 1
        assert samples[("rabbitmq_channels", None)] == 1
        assert samples[("rabbitmq_consumers", None)] == 1
        assert samples[("rabbitmq_queues", None)] == 2
        assert samples[("rabbitmq_process_resident_memory_bytes", None)] > 0
    finally:
        await trio.to_thread.run_sync(connection.close)
    assert (await served.http.get("/api/connections")).json() == []


async def test_the_alarms_health_check_follows_the_node(served: Served) -> None:
    response = await served.http.get("/api/health/checks/alarms")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})
    served.node.alarms.memory_sampled(used=2, limit=1)
    response = await served.http.get("/api/health/checks/alarms")
    assert response.status_code == 503
    assert response.json()["alarms"] == [{"node": served.node.alarms.node_name, "resource": "memory"}]
    assert (await served.http.get("/api/aliveness-test/%2F")).json() == {"status": "ok"}


async def test_a_vhost_named_with_a_slash_is_one_path_segment(served: Served) -> None:
    vhosts = (await served.http.get("/api/vhosts")).json()
    assert [v["name"] for v in vhosts] == ["/"]
    default = (await served.http.get("/api/exchanges/%2F/amq.default")).json()
    assert default["name"] == "" and default["type"] == "direct"
    names = [x["name"] for x in (await served.http.get("/api/exchanges/%2F")).json()]
    assert names == sorted(names) and "amq.topic" in names


async def test_a_single_node_lists_itself_in_api_nodes(served: Served) -> None:
    nodes = (await served.http.get("/api/nodes")).json()
    assert len(nodes) == 1
    (me,) = nodes
    overview = (await served.http.get("/api/overview")).json()
    assert me["name"] == overview["node"] and me["type"] == "disc" and me["running"] is True
    assert me["uptime"] >= 0 and me["mem_used"] > 0 and me["mem_alarm"] is False
    assert "cluster_links" not in me
    one = (await served.http.get(f"/api/nodes/{me['name']}")).json()
    assert one["name"] == me["name"] and one.keys() == me.keys()
    assert (await served.http.get("/api/nodes/nobody")).status_code == 404
    # A queue of a single node has none of a replicated queue's fields.
    connection = await trio.to_thread.run_sync(served.pika)
    channel = await trio.to_thread.run_sync(connection.channel)
    await trio.to_thread.run_sync(lambda: channel.queue_declare("solo", durable=True))
    record = (await served.http.get("/api/queues/%2F/solo")).json()
    assert record["node"] == me["name"] and "leader" not in record and "members" not in record
    await trio.to_thread.run_sync(connection.close)

