"""The management HTTP API and Prometheus metrics, checked field by field on both brokers.

RabbitMQ runs with its rabbitmq_management and rabbitmq_prometheus plugins (metrics on their own port, per
queue); Leveret serves both on its management listener. RabbitMQ's counts arrive with its stats events, so
checks of counts poll until they match.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pika
import pytest
from prometheus_client.parser import text_string_to_metric_families

from interop.brokers import Broker, ExtraUser
from interop.clients import pika_connection, unique
from interop.conftest import new_broker

USERS = (
    ExtraUser("mgmt-monitor", "monitor-secret", ("monitoring",)),
    ExtraUser("mgmt-untagged", "untagged-secret"),
)
GUEST = ("guest", "guest")
NOT_FOUND = {"error": "Object Not Found", "reason": "Not Found"}


@pytest.fixture(scope="module")
def managed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    instance = new_broker(tmp_path_factory.mktemp("managed"), management=True, users=USERS)
    try:
        instance.start()
        yield instance
    finally:
        instance.close()


@pytest.fixture
def api(managed: Broker) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=managed.management_url, auth=GUEST, timeout=10) as client:
        yield client


def eventually(check: Callable[[], Any], timeout: float = 15.0) -> Any:
    """check()'s result once it stops raising AssertionError (RabbitMQ's stats lag behind)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_requests_without_credentials_are_challenged(managed: Broker) -> None:
    response = httpx.get(f"{managed.management_url}/api/overview")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Basic realm="RabbitMQ Management"'
    assert response.content == b""


def test_a_wrong_password_is_refused(managed: Broker) -> None:
    response = httpx.get(f"{managed.management_url}/api/overview", auth=("guest", "wrong"))
    assert response.status_code == 401
    assert response.json() == {"error": "not_authorized", "reason": "Login failed"}


def test_a_user_without_a_management_tag_is_refused(managed: Broker) -> None:
    response = httpx.get(f"{managed.management_url}/api/overview", auth=("mgmt-untagged", "untagged-secret"))
    assert response.status_code == 401
    assert response.json() == {"error": "not_authorised", "reason": "Not management user"}


def test_a_monitoring_user_sees_the_overview_but_not_the_users(managed: Broker) -> None:
    auth = ("mgmt-monitor", "monitor-secret")
    assert httpx.get(f"{managed.management_url}/api/overview", auth=auth).status_code == 200
    assert httpx.get(f"{managed.management_url}/api/whoami", auth=auth).json() == {
        "name": "mgmt-monitor",
        "tags": ["monitoring"],
    }
    response = httpx.get(f"{managed.management_url}/api/users", auth=auth)
    assert response.status_code == 401
    assert response.json() == {"error": "not_authorised", "reason": "Not administrator user"}


def test_overview_names_the_node_and_counts_objects(managed: Broker, api: httpx.Client) -> None:
    with pika_connection(managed.url) as connection:
        connection.channel().queue_declare(unique("mgmt-overview"), auto_delete=True)

        def totals() -> dict[str, Any]:
            overview = api.get("/api/overview").json()
            # RabbitMQ leaves queue_totals empty until its first stats event about a queue.
            assert set(overview["queue_totals"]) >= {"messages", "messages_ready", "messages_unacknowledged"}
            assert overview["object_totals"]["connections"] >= 1 and overview["object_totals"]["queues"] >= 1
            return overview

        overview = eventually(totals)
    for key in ("management_version", "rabbitmq_version", "product_name", "node", "message_stats"):
        assert key in overview
    assert set(overview["object_totals"]) >= {"connections", "channels", "consumers", "exchanges", "queues"}
    assert {"direct", "fanout", "topic", "headers"} <= {t["name"] for t in overview["exchange_types"]}


def test_vhosts_and_the_default_exchanges(api: httpx.Client) -> None:
    vhost = api.get("/api/vhosts/%2F").json()
    assert vhost["name"] == "/" and vhost["tracing"] is False
    assert [v["name"] for v in api.get("/api/vhosts").json()] == ["/"]
    names = {x["name"] for x in api.get("/api/exchanges/%2F").json()}
    assert {"", "amq.direct", "amq.fanout", "amq.topic", "amq.headers", "amq.match"} <= names
    direct = api.get("/api/exchanges/%2F/amq.direct").json()
    keys = ("name", "vhost", "type", "durable", "auto_delete", "internal", "arguments")
    assert {k: direct[k] for k in keys} == {
        "name": "amq.direct",
        "vhost": "/",
        "type": "direct",
        "durable": True,
        "auto_delete": False,
        "internal": False,
        "arguments": {},
    }


def test_unknown_objects_are_404(api: httpx.Client) -> None:
    for path in (
        "/api/vhosts/no-such-vhost",
        "/api/queues/%2F/no-such-queue",
        "/api/exchanges/%2F/no-such-exchange",
        "/api/queues/no-such-vhost",
        "/api/aliveness-test/no-such-vhost",
        "/api/no-such-endpoint",
    ):
        response = api.get(path)
        assert (path, response.status_code, response.json()) == (path, 404, NOT_FOUND)


def test_write_methods_on_read_only_endpoints_are_405(api: httpx.Client) -> None:
    response = api.post("/api/overview")
    assert response.status_code == 405
    assert "GET" in response.headers["allow"]


def test_queue_counts_after_publishing_with_pika(managed: Broker, api: httpx.Client) -> None:
    name = unique("mgmt-counts")
    with pika_connection(managed.url) as connection:
        channel = connection.channel()
        channel.queue_declare(name, arguments={"x-max-length": 100})
        for index in range(5):
            channel.basic_publish("", name, f"message {index}".encode())
        method, _, _ = channel.basic_get(name, auto_ack=False)  # one unacknowledged
        assert method is not None

        def counted() -> dict[str, Any]:
            queue = api.get(f"/api/queues/%2F/{name}").json()
            counts = tuple(queue.get(k) for k in ("messages", "messages_ready", "messages_unacknowledged"))
            assert counts == (5, 4, 1)
            return queue

        queue = eventually(counted)
        keys = ("name", "vhost", "durable", "auto_delete", "exclusive", "arguments")
        assert {k: queue[k] for k in keys} == {
            "name": name,
            "vhost": "/",
            "durable": False,
            "auto_delete": False,
            "exclusive": False,
            "arguments": {"x-max-length": 100},
        }
        assert queue["consumers"] == 0 and queue["state"] == "running" and queue["type"] == "classic"
        assert name in {q["name"] for q in api.get("/api/queues/%2F").json()}
        assert name in {q["name"] for q in api.get("/api/queues").json()}
        channel.queue_delete(name)


def test_bindings_include_the_default_exchange(managed: Broker, api: httpx.Client) -> None:
    name = unique("mgmt-bound")
    with pika_connection(managed.url) as connection:
        channel = connection.channel()
        channel.queue_declare(name, auto_delete=True)
        channel.queue_bind(name, "amq.topic", routing_key="a.#")
        bindings = [b for b in api.get("/api/bindings/%2F").json() if b["destination"] == name]
        keys = ("source", "vhost", "destination", "destination_type", "routing_key", "arguments")
        assert sorted(tuple(b[k] for k in keys) for b in bindings) == [
            ("", "/", name, "queue", name, {}),
            ("amq.topic", "/", name, "queue", "a.#", {}),
        ]


def test_connections_channels_and_consumers_are_listed(managed: Broker, api: httpx.Client) -> None:
    name = unique("mgmt-consumed")
    with pika_connection(managed.url) as connection:
        channel = connection.channel()
        channel.queue_declare(name, exclusive=True)
        channel.basic_qos(prefetch_count=7)
        tag = channel.basic_consume(name, lambda *_: None)
        local_port = connection._impl._transport._sock.getsockname()[1]

        def listed() -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
            mine = [c for c in api.get("/api/connections").json() if c["peer_port"] == local_port]
            assert len(mine) == 1
            all_channels = api.get("/api/channels").json()
            channels = [c for c in all_channels if c["connection_details"]["peer_port"] == local_port]
            assert len(channels) == 1 and channels[0]["consumer_count"] == 1
            consumers = [c for c in api.get("/api/consumers").json() if c["consumer_tag"] == tag]
            assert len(consumers) == 1
            return mine[0], channels, consumers[0]

        conn, channels, consumer = eventually(listed)
        assert conn["user"] == "guest" and conn["vhost"] == "/" and conn["protocol"] == "AMQP 0-9-1"
        assert conn["peer_host"] == "127.0.0.1" and conn["port"] == managed.port and conn["ssl"] is False
        assert conn["name"] == f"127.0.0.1:{local_port} -> 127.0.0.1:{managed.port}"
        assert conn["auth_mechanism"] == "PLAIN" and conn["channels"] == 1
        assert conn["client_properties"]["product"] == "Pika Python Client Library"
        assert channels[0]["name"] == f"{conn['name']} (1)" and channels[0]["number"] == 1
        assert channels[0]["prefetch_count"] == 7 and channels[0]["user"] == "guest"
        assert consumer["queue"] == {"name": name, "vhost": "/"}
        assert consumer["ack_required"] is True and consumer["exclusive"] is False
        assert consumer["prefetch_count"] == 7
        assert consumer["channel_details"]["connection_name"] == conn["name"]
        queue = eventually(lambda: _with_consumers(api, name))
        assert queue["exclusive"] is True
        assert [c["consumer_tag"] for c in queue["consumer_details"]] == [tag]


def _with_consumers(api: httpx.Client, name: str) -> dict[str, Any]:
    queue = api.get(f"/api/queues/%2F/{name}").json()
    assert queue["consumers"] == 1 and len(queue["consumer_details"]) == 1
    return queue


def test_users_aliveness_and_alarms(api: httpx.Client) -> None:
    users = {u["name"]: u for u in api.get("/api/users").json()}
    assert users["guest"]["tags"] == ["administrator"]
    assert users["mgmt-untagged"]["tags"] == []
    assert users["guest"]["hashing_algorithm"] == "rabbit_password_hashing_sha256"
    assert api.get("/api/aliveness-test/%2F").json() == {"status": "ok"}
    response = api.get("/api/health/checks/alarms")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


def test_prometheus_metrics_are_aggregated_by_default(managed: Broker) -> None:
    name = unique("mgmt-aggregated")
    with pika_connection(managed.url) as connection:
        channel = connection.channel()
        channel.queue_declare(name)
        channel.basic_publish("", name, b"m")

        def scraped() -> str:
            text = httpx.get(managed.metrics_url, timeout=10).text  # unauthenticated
            families = {f.name: f.samples for f in text_string_to_metric_families(text)}
            ready = families["rabbitmq_queue_messages_ready"]
            assert len(ready) == 1 and ready[0].labels == {} and ready[0].value >= 1
            return text

        text = eventually(scraped)
        # Before: Leveret listed every queue and vhost here to anyone who asked.
        assert name not in text
        assert 'queue="' not in text
        channel.queue_delete(name)


def test_prometheus_metrics_per_queue(managed: Broker) -> None:
    name = unique("mgmt-metrics")
    with pika_connection(managed.url) as connection:
        channel = connection.channel()
        channel.queue_declare(name)
        for _ in range(3):
            channel.basic_publish("", name, b"m")

        def scraped() -> dict[str, list[Any]]:
            text = httpx.get(f"{managed.metrics_url}/per-object", timeout=10).text
            families = {f.name: f.samples for f in text_string_to_metric_families(text)}
            samples = families["rabbitmq_queue_messages_ready"]
            ready = [s.value for s in samples if s.labels.get("queue") == name]
            assert ready == [3]
            return families

        families = eventually(scraped)
        mine = [s for s in families["rabbitmq_queue_consumers"] if s.labels.get("queue") == name]
        assert mine[0].labels["vhost"] == "/" and mine[0].value == 0
        for family in ("rabbitmq_connections", "rabbitmq_channels", "rabbitmq_consumers", "rabbitmq_queues"):
            assert family in families, family
        assert families["rabbitmq_process_resident_memory_bytes"][0].value > 0
        assert any(s.labels.get("queue") == name for s in families["rabbitmq_queue_messages_unacked"])
        channel.queue_delete(name)


def test_the_alarms_health_check_fails_under_a_memory_alarm(private_broker: Callable[..., Broker]) -> None:
    from interop.brokers import ResourceLimits

    broker = private_broker(ResourceLimits(memory_high_watermark=1), management=True)

    def failing() -> httpx.Response:
        response = httpx.get(f"{broker.management_url}/api/health/checks/alarms", auth=GUEST, timeout=10)
        assert response.status_code == 503
        return response

    body = eventually(failing).json()
    assert body["status"] == "failed"
    assert [alarm["resource"] for alarm in body["alarms"]] == ["memory"]
    assert pika.URLParameters(broker.url)  # the broker is still up and serving


def test_message_stats_count_publishes_deliveries_acks_and_confirms(
    managed: Broker, api: httpx.Client
) -> None:
    name = unique("mgmt-stats")
    with pika_connection(managed.url) as connection:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.queue_declare(name, auto_delete=True)
        for index in range(10):
            channel.basic_publish("", name, f"m{index}".encode())
        for _ in range(10):
            method, _, _ = channel.basic_get(name)
            channel.basic_ack(method.delivery_tag)
        local_port = connection._impl._transport._sock.getsockname()[1]

        def counted() -> dict[str, Any]:
            # RabbitMQ lists a channel, and its stats, a moment after they happen.
            channels = api.get("/api/channels").json()
            mine = [c for c in channels if c["connection_details"]["peer_port"] == local_port]
            assert len(mine) == 1
            stats = mine[0].get("message_stats", {})
            assert {k: stats.get(k) for k in ("publish", "deliver_get", "ack", "confirm")} == {
                "publish": 10,
                "deliver_get": 10,
                "ack": 10,
                "confirm": 10,
            }
            return stats

        stats = eventually(counted)
        assert isinstance(stats["publish_details"]["rate"], int | float)
        overview = eventually(lambda: _overview_counted(api, 10))
        assert isinstance(overview["publish_details"]["rate"], int | float)


def test_message_stats_of_queues_and_exchanges(managed: Broker, api: httpx.Client) -> None:
    name = unique("mgmt-qstats")
    fanout, first, second = f"{name}-fan", f"{name}-a", f"{name}-b"
    with pika_connection(managed.url) as connection:
        channel = connection.channel()
        channel.exchange_declare(fanout, "fanout", auto_delete=True)
        for queue in (first, second):
            channel.queue_declare(queue, auto_delete=True)
            channel.queue_bind(queue, fanout)
        for _ in range(5):
            channel.basic_publish(fanout, "", b"fanned")
        for _ in range(2):
            channel.basic_publish("", first, b"direct")
        tags = [channel.basic_get(first)[0].delivery_tag for _ in range(7)]
        for tag in tags[:2]:
            channel.basic_nack(tag, requeue=True)
        again = [channel.basic_get(first)[0] for _ in range(2)]
        assert all(method.redelivered for method in again)
        for tag in [*tags[2:], *(method.delivery_tag for method in again)]:
            channel.basic_ack(tag)

        def counted() -> tuple[dict[str, Any], dict[str, Any]]:
            queue = api.get(f"/api/queues/%2F/{first}").json().get("message_stats", {})
            keys = ("publish", "deliver_get", "ack", "redeliver")
            expected = {"publish": 7, "deliver_get": 9, "ack": 7, "redeliver": 2}
            assert {k: queue.get(k) for k in keys} == expected
            exchange = api.get(f"/api/exchanges/%2F/{fanout}").json().get("message_stats", {})
            assert (exchange.get("publish_in"), exchange.get("publish_out")) == (5, 10)
            return queue, exchange

        queue, exchange = eventually(counted)
        assert isinstance(queue["deliver_get_details"]["rate"], int | float)
        assert isinstance(exchange["publish_out_details"]["rate"], int | float)
        listed = [q for q in api.get("/api/queues/%2F").json() if q["name"] == second]
        assert listed[0]["message_stats"]["publish"] == 5
        channel.exchange_delete(fanout)


def _overview_counted(api: httpx.Client, at_least: int) -> dict[str, Any]:
    stats = api.get("/api/overview").json()["message_stats"]
    assert all(stats.get(k, 0) >= at_least for k in ("publish", "deliver_get", "ack", "confirm")), stats
    return stats


def test_the_aliveness_test_publishes_and_reads_back_a_message(api: httpx.Client) -> None:
    response = api.get("/api/aliveness-test/%2F")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})
    queue = api.get("/api/queues/%2F/aliveness-test").json()
    assert (queue["durable"], queue["auto_delete"], queue["exclusive"]) == (False, False, False)
    assert queue.get("messages", 0) == 0


def test_listings_are_shaped_by_columns_and_sort(api: httpx.Client) -> None:
    names = sorted(unique("mgmt-shaped") for _ in range(3))
    for name in names:
        assert api.put(f"/api/queues/%2F/{name}", json={"arguments": {"x-max-length": 3}}).status_code == 201
    listed = api.get(
        "/api/queues/%2F",
        params={"columns": "name,arguments.x-max-length", "sort": "name", "sort_reverse": "true"},
    ).json()
    mine = [q for q in listed if q["name"] in names]
    assert mine == [{"name": name, "arguments": {"x-max-length": 3}} for name in reversed(names)]
    overview = api.get("/api/overview", params={"columns": "rabbitmq_version,object_totals.queues"}).json()
    assert set(overview) == {"rabbitmq_version", "object_totals"}
    assert (
        api.post(f"/api/bindings/%2F/e/amq.topic/q/{names[0]}", json={"routing_key": "k.#"}).status_code
        == 201
    )
    bound = api.get(f"/api/queues/%2F/{names[0]}/bindings").json()
    assert sorted((b["source"], b["routing_key"]) for b in bound) == [("", names[0]), ("amq.topic", "k.#")]
    from_topic = api.get("/api/exchanges/%2F/amq.topic/bindings/source").json()
    assert [b["routing_key"] for b in from_topic if b["destination"] == names[0]] == ["k.#"]
    assert api.get("/api/exchanges/%2F/amq.topic/bindings/destination").json() == []
    for name in names:
        api.delete(f"/api/queues/%2F/{name}")
