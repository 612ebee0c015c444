"""Definitions in RabbitMQ's JSON format: exported and imported on the broker under test, and carried both
ways between a real RabbitMQ 3.10 and Leveret (that test starts one of each; it is skipped without
rabbitmq-server)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pika
import pytest

from interop.brokers import Broker, ExtraUser, LeveretBroker, RabbitMQBroker, rabbitmq_server_script
from interop.clients import pika_connection, unique
from interop.conftest import new_broker

GUEST = ("guest", "guest")
USERS = (ExtraUser("definitions-monitor", "monitor-secret", ("monitoring",)),)
# What both brokers compare on; RabbitMQ adds cluster-wide bits (global_parameters, versions).
COMPARED = (
    "users",
    "vhosts",
    "permissions",
    "topic_permissions",
    "parameters",
    "policies",
    "queues",
    "exchanges",
    "bindings",
)


def client(broker: Broker) -> httpx.Client:
    return httpx.Client(
        base_url=broker.management_url, auth=GUEST, timeout=30, headers={"connection": "close"}
    )


@pytest.fixture(scope="module")
def managed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    instance = new_broker(tmp_path_factory.mktemp("managed-definitions"), management=True, users=USERS)
    try:
        instance.start()
        yield instance
    finally:
        instance.close()


def populate(api: httpx.Client, vhost: str) -> None:
    """A vhost with a user, permissions, a limit, a policy, exchanges, queues and bindings of each kind."""
    assert api.put(f"/api/vhosts/{vhost}", json={}).status_code == 201
    assert (
        api.put(
            f"/api/users/{vhost}-user", json={"password": "pw", "tags": "management,monitoring"}
        ).status_code
        == 201
    )
    permission = {"configure": "^app", "write": ".*", "read": "^app"}
    assert api.put(f"/api/permissions/{vhost}/{vhost}-user", json=permission).status_code == 201
    assert api.put(f"/api/vhost-limits/{vhost}/max-queues", json={"value": 50}).status_code == 204
    policy = {"pattern": "^app\\.", "definition": {"max-length-bytes": 1000000, "expires": 3600000},
              "apply-to": "queues", "priority": 4}  # fmt: skip
    assert api.put(f"/api/policies/{vhost}/app-limits", json=policy).status_code == 201
    topic = {"exchange": "app.events", "write": "^a", "read": ".*"}
    assert api.put(f"/api/topic-permissions/{vhost}/{vhost}-user", json=topic).status_code == 201
    assert (
        api.put(f"/api/exchanges/{vhost}/app.events", json={"type": "topic", "durable": True}).status_code
        == 201
    )
    alternate = {"type": "fanout", "durable": True, "arguments": {"alternate-exchange": "amq.fanout"}}
    assert api.put(f"/api/exchanges/{vhost}/app.fan", json=alternate).status_code == 201
    arguments = {"x-max-length": 100, "x-dead-letter-exchange": "app.fan", "x-message-ttl": 60000}
    assert (
        api.put(f"/api/queues/{vhost}/app.work", json={"durable": True, "arguments": arguments}).status_code
        == 201
    )
    assert (
        api.put(
            f"/api/queues/{vhost}/app.transient", json={"durable": False, "auto_delete": True}
        ).status_code
        == 201
    )
    body = {"routing_key": "a.*.c", "arguments": {"x-match": "all", "n": 1}}
    assert api.post(f"/api/bindings/{vhost}/e/app.events/q/app.work", json=body).status_code == 201
    assert (
        api.post(f"/api/bindings/{vhost}/e/app.events/e/app.fan", json={"routing_key": "#"}).status_code
        == 201
    )


def normalised(definitions: dict[str, Any], vhost: str) -> dict[str, Any]:
    """The parts about `vhost` (and its user), order-free."""

    def key(item: dict[str, Any]) -> str:
        return repr(sorted(item.items()))

    picked: dict[str, Any] = {}
    for section in COMPARED:
        items = definitions.get(section, [])
        if section == "users":
            items = [
                {**u, "tags": sorted(u["tags"]), "limits": {}} for u in items if u["name"] == f"{vhost}-user"
            ]
        elif section == "vhosts":
            items = [{"name": v["name"]} for v in items if v["name"] == vhost]
        else:
            items = [i for i in items if i.get("vhost") == vhost]
        picked[section] = sorted(items, key=key)
    return picked


def test_export_then_import_recreates_a_vhost(managed: Broker) -> None:
    vhost = unique("defs")
    with client(managed) as api:
        populate(api, vhost)
        exported = api.get("/api/definitions").json()
        assert set(exported) >= {
            "rabbit_version",
            *COMPARED,
            "policies",
            "topic_permissions",
            "global_parameters",
        }
        before = normalised(exported, vhost)
        assert {q["name"] for q in before["queues"]} == {"app.transient", "app.work"}
        per_vhost = api.get(f"/api/definitions/{vhost}").json()
        assert {q["name"] for q in per_vhost["queues"]} == {"app.transient", "app.work"}
        assert "vhost" not in per_vhost["queues"][0] and "users" not in per_vhost
        assert api.delete(f"/api/vhosts/{vhost}").status_code == 204
        assert api.delete(f"/api/users/{vhost}-user").status_code == 204
        assert api.post("/api/definitions", json=exported).status_code == 204
        assert normalised(api.get("/api/definitions").json(), vhost) == before
        # Importing again changes nothing: existing objects are left as they are.
        assert api.post("/api/definitions", json=exported).status_code == 204
        assert normalised(api.get("/api/definitions").json(), vhost) == before
    with pika_connection(f"amqp://{vhost}-user:pw@{managed.host}:{managed.port}/{vhost}") as connection:
        assert connection.channel().queue_declare("app.work", passive=True).method.message_count == 0


def test_import_errors(managed: Broker) -> None:
    with client(managed) as api:
        json_type = {"content-type": "application/json"}
        garbage = api.post("/api/definitions", content=b"garbage", headers=json_type)
        assert garbage.json() == {
            "error": "bad_request",
            "reason": "failed_to_parse_json",
        }
        queue = {
            "name": "q",
            "vhost": "no-such-vhost",
            "durable": True,
            "auto_delete": False,
            "arguments": {},
        }
        response = api.post("/api/definitions", json={"queues": [queue]})
        assert (response.status_code, response.json()) == (
            400,
            {"error": "bad_request", "reason": ["no_such_vhost", "no-such-vhost"]},
        )
        users = {"users": [{"name": unique("u"), "password_hash": "xyz", "tags": ""}]}
        assert api.post("/api/definitions", json=users).json() == {
            "error": "bad_request",
            "reason": ["not_base64", "xyz"],
        }
    monitor_auth = (USERS[0].name, USERS[0].password)
    with httpx.Client(
        base_url=managed.management_url, auth=monitor_auth, headers={"connection": "close"}
    ) as monitor:
        assert monitor.get("/api/definitions").json() == {
            "error": "not_authorised",
            "reason": "Not administrator user",
        }


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Broker, Broker]]:
    script = rabbitmq_server_script()
    if script is None:
        pytest.skip("rabbitmq-server is not installed")
    rabbitmq = RabbitMQBroker(
        Path(tmp_path_factory.mktemp("defs-rabbitmq")), script, management=True, users=USERS
    )
    leveret = LeveretBroker(Path(tmp_path_factory.mktemp("defs-leveret")), management=True, users=USERS)
    try:
        rabbitmq.start()
        leveret.start()
        yield rabbitmq, leveret
    finally:
        leveret.close()
        rabbitmq.close()


@pytest.mark.parametrize("direction", ["rabbitmq-to-leveret", "leveret-to-rabbitmq"])
def test_definitions_carry_between_rabbitmq_and_leveret(both: tuple[Broker, Broker], direction: str) -> None:
    rabbitmq, leveret = both
    source, target = (rabbitmq, leveret) if direction == "rabbitmq-to-leveret" else (leveret, rabbitmq)
    vhost = unique("carried")
    with client(source) as api:
        populate(api, vhost)
        exported = api.get("/api/definitions").json()
    with client(target) as api:
        response = api.post("/api/definitions", json=exported)
        assert response.status_code == 204, response.text
        assert normalised(api.get("/api/definitions").json(), vhost) == normalised(exported, vhost)
    # The carried user logs in to the target with its password, through the exported hash.
    with client(target) as api:
        # The queue carried follows the policy carried with it (RabbitMQ shows it a moment later).
        expected = ("app-limits", {"max-length-bytes": 1000000, "expires": 3600000})
        deadline = time.monotonic() + 15
        while True:
            shown = api.get(f"/api/queues/{vhost}/app.work").json()
            if (shown.get("policy"), shown.get("effective_policy_definition")) == expected:
                break
            assert time.monotonic() < deadline, shown
            time.sleep(0.2)
    with pika_connection(f"amqp://{vhost}-user:pw@{target.host}:{target.port}/{vhost}") as connection:
        channel = connection.channel()
        assert channel.queue_declare("app.work", passive=True).method.message_count == 0
        channel.confirm_delivery()
        channel.basic_publish(
            "app.events", "a.b.c", b"routed", pika.BasicProperties(delivery_mode=2), mandatory=True
        )
        method, _, body = channel.basic_get("app.work", auto_ack=True)
        assert body == b"routed"
