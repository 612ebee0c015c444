"""The HTTP way in: publish over HTTP, get over HTTP with each ackmode, and the same messages seen by pika
clients, the same on both brokers."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from interop.brokers import Broker, ExtraUser
from interop.clients import pika_connection, unique
from interop.conftest import new_broker

LIMITED = ExtraUser("messaging-limited", "limited-secret", ("management",))
GUEST = ("guest", "guest")


@pytest.fixture(scope="module")
def managed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    instance = new_broker(tmp_path_factory.mktemp("managed-messaging"), management=True, users=(LIMITED,))
    try:
        instance.start()
        yield instance
    finally:
        instance.close()


@pytest.fixture
def api(managed: Broker) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=managed.management_url, auth=GUEST, timeout=10, headers={"connection": "close"}
    ) as client:
        yield client


def answer(response: httpx.Response) -> tuple[int, Any]:
    return response.status_code, response.json() if response.content else None


def send(api: httpx.Client, queue: str, payload: str, **fields: Any) -> tuple[int, Any]:
    body = {
        "routing_key": queue,
        "payload": payload,
        "payload_encoding": "string",
        "properties": {},
        **fields,
    }
    return answer(api.post("/api/exchanges/%2F/amq.default/publish", json=body))


def receive(api: httpx.Client, queue: str, ackmode: str, count: int = 1, **fields: Any) -> Any:
    body = {"count": count, "ackmode": ackmode, "encoding": "auto", **fields}
    response = api.post(f"/api/queues/%2F/{queue}/get", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def test_publish_answers_whether_the_message_was_routed(api: httpx.Client) -> None:
    queue = unique("http-routed")
    assert api.put(f"/api/queues/%2F/{queue}", json={}).status_code == 201
    assert send(api, queue, "hello") == (200, {"routed": True})
    assert send(api, unique("nowhere"), "hello") == (200, {"routed": False})
    assert answer(
        api.post(
            "/api/exchanges/%2F/no-such-exchange/publish",
            json={"routing_key": "k", "payload": "x", "payload_encoding": "string", "properties": {}},
        )
    ) == (
        400,
        {"error": "bad_request", "reason": "404 NOT_FOUND - no exchange 'no-such-exchange' in vhost '/'"},
    )
    api.delete(f"/api/queues/%2F/{queue}")


def test_send_receive_delete_with_the_ackmodes(api: httpx.Client) -> None:
    queue = unique("http-ackmodes")
    assert api.put(f"/api/queues/%2F/{queue}", json={}).status_code == 201
    for index in range(3):
        assert send(api, queue, f"m{index}")[0] == 200
    # ack_requeue_true: received and left in the queue, marked redelivered.
    peeked = receive(api, queue, "ack_requeue_true", count=2)
    assert [(m["payload"], m["redelivered"], m["message_count"]) for m in peeked] == [
        ("m0", False, 2),
        ("m1", False, 1),
    ]
    assert peeked[0] | {"payload": None} == {
        "payload_bytes": 2,
        "redelivered": False,
        "exchange": "",
        "routing_key": queue,
        "message_count": 2,
        "properties": [],
        "payload": None,
        "payload_encoding": "string",
    }
    # ack_requeue_false: received and deleted.
    taken = receive(api, queue, "ack_requeue_false")
    assert [(m["payload"], m["redelivered"], m["message_count"]) for m in taken] == [("m0", True, 2)]
    assert [m["payload"] for m in receive(api, queue, "reject_requeue_true")] == ["m1"]
    assert [m["payload"] for m in receive(api, queue, "reject_requeue_false", count=5)] == ["m1", "m2"]
    assert receive(api, queue, "ack_requeue_false") == []
    api.delete(f"/api/queues/%2F/{queue}")


def test_rejected_without_requeue_is_dead_lettered(api: httpx.Client) -> None:
    queue, dead = unique("http-dlx"), unique("http-dead")
    assert api.put(f"/api/queues/%2F/{dead}", json={}).status_code == 201
    arguments = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead}
    assert api.put(f"/api/queues/%2F/{queue}", json={"arguments": arguments}).status_code == 201
    send(api, queue, "doomed")
    receive(api, queue, "reject_requeue_false")
    [message] = receive(api, dead, "ack_requeue_false")
    assert message["payload"] == "doomed"
    assert message["properties"]["headers"]["x-death"][0]["reason"] == "rejected"
    api.delete(f"/api/queues/%2F/{queue}")
    api.delete(f"/api/queues/%2F/{dead}")


def test_properties_and_binary_payloads_round_trip_with_pika(managed: Broker, api: httpx.Client) -> None:
    queue = unique("http-properties")
    properties = {
        "delivery_mode": 2,
        "headers": {"a": 1, "b": "s", "c": [1, "x"], "d": {"e": True}},
        "content_type": "text/plain",
        "content_encoding": "gzip",
        "priority": 3,
        "correlation_id": "c1",
        "reply_to": "r",
        "expiration": "60000",
        "message_id": "m",
        "timestamp": 12345,
        "type": "t",
        "user_id": "guest",
        "app_id": "app",
    }
    assert api.put(f"/api/queues/%2F/{queue}", json={"durable": True}).status_code == 201
    assert send(api, queue, "aGk=", payload_encoding="base64", properties=properties) == (
        200,
        {"routed": True},
    )
    [message] = receive(api, queue, "ack_requeue_true")
    assert (message["payload"], message["payload_encoding"], message["properties"]) == (
        "hi",
        "string",
        properties,
    )
    with pika_connection(managed.url) as connection:
        method, received, body = connection.channel().basic_get(queue, auto_ack=True)
        assert body == b"hi" and received.headers == {"a": 1, "b": "s", "c": [1, "x"], "d": {"e": True}}
        assert (received.delivery_mode, received.priority, received.type, received.app_id) == (
            2,
            3,
            "t",
            "app",
        )
        connection.channel().basic_publish("", queue, b"\xff\xfe")
    binary = base64.b64encode(b"\xff\xfe").decode()
    [message] = receive(api, queue, "ack_requeue_true")
    assert (message["payload"], message["payload_encoding"]) == (binary, "base64")
    [message] = receive(api, queue, "ack_requeue_false", encoding="base64", truncate=1)
    assert (message["payload"], message["payload_bytes"]) == (base64.b64encode(b"\xff").decode(), 2)
    api.delete(f"/api/queues/%2F/{queue}")


def test_bad_requests_are_400_with_rabbitmqs_reasons(api: httpx.Client) -> None:
    queue = unique("http-bad")
    assert api.put(f"/api/queues/%2F/{queue}", json={}).status_code == 201
    publish = "/api/exchanges/%2F/amq.default/publish"
    good = {"routing_key": queue, "payload": "x", "payload_encoding": "string", "properties": {}}
    for missing in ("properties", "payload_encoding", "routing_key", "payload"):
        body = {k: v for k, v in good.items() if k != missing}
        assert answer(api.post(publish, json=body)) == (
            400,
            {"error": "bad_request", "reason": f"[{{key_missing,{missing}}}]"},
        )
    cases = [
        ({"payload_encoding": "bogus"}, ["unsupported_encoding", "bogus"]),
        ({"payload": "!!!", "payload_encoding": "base64"}, ["not_base64", "!!!"]),
        ({"properties": {"delivery_mode": "x"}}, ["not_int", "delivery_mode"]),
        (
            {"properties": {"user_id": "other"}},
            "406 PRECONDITION_FAILED - user_id property set to 'other' but authenticated user was 'guest'",
        ),
        (
            {"properties": {"expiration": "abc"}},
            "406 PRECONDITION_FAILED - invalid expiration 'abc': no_integer",
        ),
    ]
    for change, reason in cases:
        assert answer(api.post(publish, json=good | change)) == (
            400,
            {"error": "bad_request", "reason": reason},
        )
    get = f"/api/queues/%2F/{queue}/get"
    assert answer(api.post(get, json={"ackmode": "ack_requeue_false", "encoding": "auto"})) == (
        400,
        {"error": "bad_request", "reason": "[{key_missing,count}]"},
    )
    assert answer(api.post(get, json={"count": 1, "encoding": "auto"})) == (
        400,
        {"error": "bad_request", "reason": "[{key_missing,ackmode}]"},
    )
    assert answer(api.post(get, json={"count": "x", "ackmode": "ack_requeue_false", "encoding": "auto"})) == (
        400,
        {"error": "bad_request", "reason": ["not_integer", "x"]},
    )
    assert answer(api.post(get, json={"count": 1, "ackmode": "ack_requeue_false", "encoding": "bogus"})) == (
        400,
        {"error": "bad_request", "reason": "Unsupported encoding. Please use auto or base64."},
    )
    assert answer(
        api.post(
            "/api/queues/%2F/no-such-queue/get",
            json={"count": 1, "ackmode": "ack_requeue_false", "encoding": "auto"},
        )
    ) == (
        404,
        {"error": "not_found", "reason": "NOT_FOUND - no queue 'no-such-queue' in vhost '/'"},
    )
    api.delete(f"/api/queues/%2F/{queue}")


def test_permissions_apply_as_over_amqp(managed: Broker, api: httpx.Client) -> None:
    queue = unique("http-perm")
    assert api.put(f"/api/queues/%2F/{queue}", json={}).status_code == 201
    assert api.put(
        f"/api/permissions/%2F/{LIMITED.name}", json={"configure": "^ok", "write": "^ok", "read": "^ok"}
    ).status_code in (201, 204)
    with httpx.Client(
        base_url=managed.management_url,
        auth=(LIMITED.name, LIMITED.password),
        timeout=10,
        headers={"connection": "close"},
    ) as limited:
        body = {"routing_key": "x", "payload": "x", "payload_encoding": "string", "properties": {}}
        assert answer(limited.post("/api/exchanges/%2F/amq.direct/publish", json=body)) == (
            400,
            {
                "error": "bad_request",
                "reason": "403 ACCESS_REFUSED - access to exchange 'amq.direct' in vhost '/' refused for "
                f"user '{LIMITED.name}'",
            },
        )
        assert answer(
            limited.post(
                f"/api/queues/%2F/{queue}/get",
                json={"count": 1, "ackmode": "ack_requeue_false", "encoding": "auto"},
            )
        ) == (
            401,
            {
                "error": "not_authorised",
                "reason": f"ACCESS_REFUSED - access to queue '{queue}' in vhost '/' refused for "
                f"user '{LIMITED.name}'",
            },
        )
    api.delete(f"/api/queues/%2F/{queue}")
