"""The management API's write endpoints, the same requests and answers on both brokers: declaring and
deleting exchanges, queues and bindings, purging, closing connections, vhosts, users, permissions and vhost
limits (with the limits enforced over AMQP), and which user tags may change what."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pika
import pika.exceptions
import pytest

from interop.brokers import Broker, ExtraUser
from interop.clients import pika_connection, unique
from interop.conftest import new_broker

USERS = (
    ExtraUser("writes-monitor", "monitor-secret", ("monitoring",)),
    ExtraUser("writes-manager", "manager-secret", ("management",)),
    ExtraUser("writes-policy", "policy-secret", ("policymaker",)),
)
GUEST = ("guest", "guest")
NOT_FOUND = {"error": "Object Not Found", "reason": "Not Found"}
ACCESS_REFUSED = {"error": "not_authorised", "reason": "Access refused."}
NOT_ADMIN = {"error": "not_authorised", "reason": "Not administrator user"}
CLOSE = {"connection": "close"}


@pytest.fixture(scope="module")
def managed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    instance = new_broker(tmp_path_factory.mktemp("managed-writes"), management=True, users=USERS)
    try:
        instance.start()
        yield instance
    finally:
        instance.close()


@pytest.fixture
def api(managed: Broker) -> Iterator[httpx.Client]:
    # RabbitMQ drops a kept-alive connection after some of its 400 answers: one connection per request.
    with httpx.Client(
        base_url=managed.management_url, auth=GUEST, timeout=10, headers={"connection": "close"}
    ) as client:
        yield client


def answer(response: httpx.Response) -> tuple[int, Any]:
    return response.status_code, response.json() if response.content else None


def amqp_url(broker: Broker, vhost: str, user: str = "guest", password: str = "guest") -> str:
    return f"amqp://{user}:{password}@{broker.host}:{broker.port}/{quote(vhost, safe='')}"


def test_exchanges_are_declared_and_deleted(api: httpx.Client) -> None:
    name = unique("http-x")
    path = f"/api/exchanges/%2F/{name}"
    assert answer(api.put(path, json={"type": "topic", "durable": True})) == (201, None)
    assert answer(api.put(path, json={"type": "topic", "durable": True})) == (204, None)
    shown = api.get(path).json()
    assert (shown["type"], shown["durable"], shown["auto_delete"], shown["internal"]) == (
        "topic",
        True,
        False,
        False,
    )
    assert answer(api.put(path, json={"type": "fanout", "durable": True})) == (
        400,
        {
            "error": "bad_request",
            "reason": f"inequivalent arg 'type' for exchange '{name}' in vhost '/': received 'fanout' but "
            "current is 'topic'",
        },
    )
    assert answer(api.put(f"/api/exchanges/%2F/{unique('http-x')}", json={"type": "nosuch"})) == (
        400,
        {"error": "bad_request", "reason": "unknown exchange type 'nosuch'"},
    )
    assert answer(api.put("/api/exchanges/%2F/amq.mine", json={"type": "direct"})) == (401, ACCESS_REFUSED)
    assert answer(api.put("/api/exchanges/no-such-vhost/x", json={"type": "direct"})) == (
        404,
        {"error": "not_found", "reason": "vhost_not_found"},
    )
    # rabbitmqadmin sends booleans as strings.
    assert (
        answer(
            api.put(f"/api/exchanges/%2F/{unique('http-x')}", json={"type": "direct", "durable": "false"})
        )[0]
        == 201
    )
    assert answer(api.put(f"/api/exchanges/%2F/{unique('http-x')}", json={"durable": "yes"})) == (
        400,
        {"error": "bad_request", "reason": ["not_boolean", "yes"]},
    )
    assert answer(api.delete(path)) == (204, None)
    assert answer(api.delete(path)) == (404, NOT_FOUND)
    assert answer(api.delete("/api/exchanges/%2F/amq.direct")) == (401, ACCESS_REFUSED)
    assert answer(api.delete("/api/exchanges/%2F/amq.default")) == (401, ACCESS_REFUSED)


def test_queues_are_declared_purged_and_deleted(managed: Broker, api: httpx.Client) -> None:
    name = unique("http-q")
    path = f"/api/queues/%2F/{name}"
    assert answer(api.put(path, json={"durable": True, "arguments": {"x-max-length": 10}})) == (201, None)
    assert answer(api.put(path, json={"durable": True, "arguments": {"x-max-length": 10}})) == (204, None)
    assert api.get(path).json()["arguments"] == {"x-max-length": 10}
    assert answer(api.put(path, json={"durable": False})) == (
        400,
        {
            "error": "bad_request",
            "reason": f"inequivalent arg 'durable' for queue '{name}' in vhost '/': received 'false' but "
            "current is 'true'",
        },
    )
    other = unique("http-q")
    assert answer(api.put(f"/api/queues/%2F/{other}", json={"arguments": {"x-max-length": -1}})) == (
        400,
        {
            "error": "bad_request",
            "reason": f"invalid arg 'x-max-length' for queue '{other}' in vhost '/': {{value_negative,-1}}",
        },
    )
    assert answer(api.put("/api/queues/%2F/amq.mine", json={})) == (401, ACCESS_REFUSED)
    assert answer(api.put("/api/queues/%2F/" + "q" * 300, json={})) == (
        400,
        {"error": "bad_request", "reason": "queue should be less than 255 bytes, actually was 300\n"},
    )
    with pika_connection(managed.url) as connection:
        channel = connection.channel()
        for index in range(3):
            channel.basic_publish("", name, f"m{index}".encode())
        assert answer(api.delete(f"{path}?if-empty=true")) == (
            400,
            {"error": "bad_request", "reason": f"queue '{name}' in vhost '/' not empty"},
        )
        assert answer(api.delete(f"{path}/contents")) == (204, None)
        assert channel.queue_declare(name, passive=True).method.message_count == 0
        channel.basic_consume(name, lambda *_: None)
        assert answer(api.delete(f"{path}?if-unused=true")) == (
            400,
            {"error": "bad_request", "reason": f"queue '{name}' in vhost '/' in use"},
        )
        assert answer(api.delete(path)) == (204, None)
    assert answer(api.delete(path)) == (404, NOT_FOUND)
    assert answer(api.delete(f"{path}/contents")) == (404, NOT_FOUND)


def test_bindings_are_made_listed_and_deleted_by_properties_key(api: httpx.Client) -> None:
    queue, exchange = unique("http-bq"), unique("http-bx")
    assert api.put(f"/api/queues/%2F/{queue}", json={}).status_code == 201
    assert api.put(f"/api/exchanges/%2F/{exchange}", json={"type": "direct"}).status_code == 201
    base = f"/api/bindings/%2F/e/{exchange}/q/{queue}"
    made = api.post(base, json={"routing_key": "rk", "arguments": {"a": "b"}})
    assert made.status_code == 201 and made.headers["location"].startswith(f"{queue}/rk~")
    plain = api.post(base, json={})
    assert (plain.status_code, plain.headers["location"]) == (201, f"{queue}/~")
    listed = sorted(api.get(base).json(), key=lambda b: b["routing_key"])
    assert [(b["routing_key"], b["arguments"], b["destination_type"]) for b in listed] == [
        ("", {}, "queue"),
        ("rk", {"a": "b"}, "queue"),
    ]
    assert listed[0]["properties_key"] == "~"
    key = listed[1]["properties_key"]
    assert api.get(f"{base}/{quote(key, safe='')}").json()["routing_key"] == "rk"
    assert answer(api.delete(f"{base}/{quote(key, safe='')}")) == (204, None)
    assert answer(api.delete(f"{base}/{quote(key, safe='')}")) == (404, NOT_FOUND)
    assert answer(api.delete(f"{base}/~")) == (204, None)
    assert api.get(base).json() == []
    assert answer(api.post(f"/api/bindings/%2F/e/{exchange}/q/no-such-queue", json={})) == (
        404,
        {"error": "not_found", "reason": "no queue 'no-such-queue' in vhost '/'"},
    )
    assert answer(api.post(f"/api/bindings/%2F/e/no-such-exchange/q/{queue}", json={})) == (
        404,
        {"error": "not_found", "reason": "no exchange 'no-such-exchange' in vhost '/'"},
    )
    assert answer(api.post(f"/api/bindings/%2F/e/amq.default/q/{queue}", json={})) == (401, ACCESS_REFUSED)
    to_exchange = api.post(f"/api/bindings/%2F/e/{exchange}/e/amq.fanout", json={"routing_key": "z"})
    assert (to_exchange.status_code, to_exchange.headers["location"]) == (201, "amq.fanout/z")
    assert api.get(f"/api/bindings/%2F/e/{exchange}/e/amq.fanout/z").json()["destination_type"] == "exchange"
    assert answer(api.delete(f"/api/bindings/%2F/e/{exchange}/e/amq.fanout/z")) == (204, None)
    api.delete(f"/api/queues/%2F/{queue}")
    api.delete(f"/api/exchanges/%2F/{exchange}")


def connection_name(api: httpx.Client, connection: pika.BlockingConnection) -> str:
    """The connection's name in /api/connections, found by its local port (RabbitMQ lists it a moment
    after it opens)."""
    port = connection._impl._transport._sock.getsockname()[1]
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        names = [c["name"] for c in api.get("/api/connections").json() if c["peer_port"] == port]
        if names:
            return names[0]
        time.sleep(0.2)
    raise AssertionError("the connection never showed up in /api/connections")


@pytest.mark.parametrize(
    ("headers", "text"),
    [({"X-Reason": "maintenance window"}, "maintenance window"), ({}, "Closed via management plugin")],
)
def test_closing_a_connection_sends_320_with_the_reason(
    managed: Broker, api: httpx.Client, headers: dict[str, str], text: str
) -> None:
    user = USERS[1]
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url(managed, "/", user.name, user.password)))
    try:
        name = connection_name(api, connection)
        assert answer(api.delete(f"/api/connections/{quote(name, safe='')}", headers=headers)) == (204, None)
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
            connection.process_data_events(time_limit=5)
            connection.process_data_events(time_limit=5)
        assert (closed.value.reply_code, closed.value.reply_text) == (320, f"CONNECTION_FORCED - {text}")
    finally:
        if connection.is_open:
            connection.close()
    assert answer(api.delete("/api/connections/no-such-connection")) == (404, NOT_FOUND)


def test_vhosts_users_and_permissions(managed: Broker, api: httpx.Client) -> None:
    vhost, user = unique("http-vhost"), unique("http-user")
    assert answer(api.put(f"/api/vhosts/{vhost}", json={})) == (201, None)
    assert answer(api.put(f"/api/vhosts/{vhost}", json={})) == (204, None)
    described = {"description": "the d", "tags": "a,b"}
    assert answer(api.put(f"/api/vhosts/{vhost}", json=described)) == (204, None)
    shown = api.get(f"/api/vhosts/{vhost}").json()
    assert (shown["description"], shown["tags"], shown["metadata"]) == (
        "the d",
        ["a", "b"],
        {"description": "the d", "tags": ["a", "b"]},
    )
    # Its creator gets full permissions in it.
    assert api.get(f"/api/vhosts/{vhost}/permissions").json() == [
        {"user": "guest", "vhost": vhost, "configure": ".*", "write": ".*", "read": ".*"}
    ]
    assert answer(api.put(f"/api/users/{user}", json={"password": "pw"})) == (
        400,
        {"error": "bad_request", "reason": "tags_not_present"},
    )
    assert answer(api.put(f"/api/users/{user}", json={"password": "pw", "tags": "management"})) == (201, None)
    assert answer(
        api.put(f"/api/users/{user}", json={"password": "pw2", "tags": ["management", "monitoring"]})
    ) == (
        204,
        None,
    )
    shown = api.get(f"/api/users/{user}").json()
    assert (shown["tags"], shown["hashing_algorithm"]) == (
        ["management", "monitoring"],
        "rabbit_password_hashing_sha256",
    )
    permission = f"/api/permissions/{vhost}/{user}"
    assert answer(api.put(permission, json={"configure": ".*"})) == (
        400,
        {"error": "bad_request", "reason": "[{key_missing,write},{key_missing,read}]"},
    )
    assert answer(
        api.put(f"/api/permissions/{vhost}/no-such-user", json={"configure": "", "write": "", "read": ""})
    ) == (
        400,
        {"error": "bad_request", "reason": "vhost_or_user_not_found"},
    )
    assert answer(api.put(permission, json={"configure": "^ok", "write": ".*", "read": ".*"})) == (201, None)
    assert answer(api.put(permission, json={"configure": "^ok", "write": ".*", "read": ".*"})) == (204, None)
    assert api.get(permission).json() == {
        "user": user,
        "vhost": vhost,
        "configure": "^ok",
        "write": ".*",
        "read": ".*",
    }
    assert api.get(f"/api/users/{user}/permissions").json() == [api.get(permission).json()]
    # The new user logs in over AMQP with its new password and its permissions hold.
    with pika_connection(amqp_url(managed, vhost, user, "pw2")) as connection:
        channel = connection.channel()
        channel.queue_declare("ok-queue")
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
            channel.queue_declare("other-queue")
        assert refused.value.reply_code == 403
    assert answer(api.delete(permission)) == (204, None)
    assert answer(api.delete(permission)) == (404, NOT_FOUND)
    assert answer(api.delete(f"/api/users/{user}")) == (204, None)
    assert answer(api.delete(f"/api/users/{user}")) == (404, NOT_FOUND)
    assert answer(api.get(f"/api/users/{user}")) == (404, NOT_FOUND)
    with pika_connection(amqp_url(managed, vhost)) as connection:
        assert answer(api.delete(f"/api/vhosts/{vhost}")) == (204, None)
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
            connection.process_data_events(time_limit=5)
            connection.process_data_events(time_limit=5)
        # RabbitMQ says "is down" instead when the vhost's processes stop before the connection is told.
        assert closed.value.reply_code == 320
        assert closed.value.reply_text in (
            f"CONNECTION_FORCED - vhost '{vhost}' is {state}" for state in ("deleted", "down")
        )
    assert answer(api.delete(f"/api/vhosts/{vhost}")) == (404, NOT_FOUND)


def test_a_user_made_with_a_password_hash_logs_in(managed: Broker, api: httpx.Client) -> None:
    from leveret.config import hash_password

    user = unique("http-hashed")
    body = {
        "password_hash": hash_password("hashed-pw"),
        "hashing_algorithm": "rabbit_password_hashing_sha256",
        "tags": "",
    }
    assert answer(api.put(f"/api/users/{user}", json=body)) == (201, None)
    assert (
        api.put(
            f"/api/permissions/%2F/{user}", json={"configure": ".*", "write": ".*", "read": ".*"}
        ).status_code
        == 201
    )
    with pika_connection(amqp_url(managed, "/", user, "hashed-pw")) as connection:
        assert connection.is_open
    assert answer(api.put(f"/api/users/{unique('bad')}", json={"password_hash": "abc", "tags": ""})) == (
        400,
        {"error": "bad_request", "reason": ["not_base64", "abc"]},
    )
    api.delete(f"/api/users/{user}")


def test_vhost_limits_are_set_shown_and_enforced(managed: Broker, api: httpx.Client) -> None:
    vhost = unique("http-limited")
    assert api.put(f"/api/vhosts/{vhost}", json={}).status_code == 201
    limit = f"/api/vhost-limits/{vhost}"
    assert answer(api.put(f"{limit}/max-connections", json={"value": 1})) == (204, None)
    assert answer(api.put(f"{limit}/max-queues", json={"value": 2})) == (204, None)
    assert api.get(limit).json() == [{"vhost": vhost, "value": {"max-connections": 1, "max-queues": 2}}]
    assert {"vhost": vhost, "value": {"max-connections": 1, "max-queues": 2}} in api.get(
        "/api/vhost-limits"
    ).json()
    assert answer(api.put(f"{limit}/max-bogus", json={"value": 2})) == (
        400,
        {
            "error": "bad_request",
            "reason": 'Validation failed\n\nUnrecognised terms [{<<"max-bogus">>,2}] in limits\n',
        },
    )
    assert answer(api.put(f"{limit}/max-queues", json={"value": "x"})) == (
        400,
        {
            "error": "bad_request",
            "reason": 'Validation failed\n\nmax-queues should be a number, actually was <<"x">>\n',
        },
    )
    assert answer(api.put(f"{limit}/max-queues", json={})) == (
        400,
        {"error": "bad_request", "reason": "[{key_missing,value}]"},
    )
    assert answer(api.put("/api/vhost-limits/no-such-vhost/max-queues", json={"value": 1})) == (
        404,
        {"error": "not_found", "reason": "vhost_not_found"},
    )
    with pika_connection(amqp_url(managed, vhost)) as connection:
        with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as refused:
            pika.BlockingConnection(pika.URLParameters(amqp_url(managed, vhost)))
        assert (
            f"NOT_ALLOWED - access to vhost '{vhost}' refused for user 'guest': "
            "connection limit (1) is reached" in str(refused.value)
        )
        channel = connection.channel()
        channel.queue_declare("first")
        channel.queue_declare("second")
        channel.queue_declare("second")  # redeclaring is not a new queue
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as full:
            channel.queue_declare("third")
        assert (full.value.reply_code, full.value.reply_text) == (
            406,
            f"PRECONDITION_FAILED - cannot declare queue 'third': queue limit in vhost '{vhost}' "
            "(2) is reached",
        )
    assert answer(api.delete(f"{limit}/max-connections")) == (204, None)
    assert answer(api.delete(f"{limit}/max-connections")) == (204, None)
    assert api.get(limit).json() == [{"vhost": vhost, "value": {"max-queues": 2}}]
    api.delete(f"/api/vhosts/{vhost}")


def test_user_limits_are_set_shown_and_enforced(managed: Broker, api: httpx.Client) -> None:
    user = unique("http-limited-user")
    assert api.put(f"/api/users/{user}", json={"password": "pw", "tags": ""}).status_code == 201
    permission = {"configure": ".*", "write": ".*", "read": ".*"}
    assert api.put(f"/api/permissions/%2F/{user}", json=permission).status_code == 201
    limit = f"/api/user-limits/{user}"
    assert answer(api.get(limit)) == (200, [])
    assert answer(api.put(f"{limit}/max-connections", json={"value": 1})) == (204, None)
    assert answer(api.put(f"{limit}/max-channels", json={"value": 2})) == (204, None)
    shown = {"user": user, "value": {"max-connections": 1, "max-channels": 2}}
    assert api.get(limit).json() == [shown]
    assert shown in api.get("/api/user-limits").json()
    assert api.get(f"/api/users/{user}").json()["limits"] == {"max-connections": 1, "max-channels": 2}
    assert answer(api.put(f"{limit}/max-bogus", json={"value": 2})) == (
        400, {"error": "bad_request", "reason": 'Unrecognised terms [{<<"max-bogus">>,2}] in user-limits'}
    )  # fmt: skip
    assert answer(api.put(f"{limit}/max-channels", json={"value": "x"})) == (
        400, {"error": "bad_request", "reason": 'max-channels should be a number, actually was <<"x">>'}
    )  # fmt: skip
    assert answer(api.put(f"{limit}/max-channels", json={})) == (
        400, {"error": "bad_request", "reason": "[{key_missing,value}]"}
    )  # fmt: skip
    assert answer(api.put("/api/user-limits/no-such-user/max-channels", json={"value": 1})) == (
        400, {"error": "bad_request", "reason": ["no_such_user", "no-such-user"]}
    )  # fmt: skip
    assert answer(api.get("/api/user-limits/no-such-user")) == (404, NOT_FOUND)
    url = amqp_url(managed, "/", user, "pw")
    with pika_connection(url) as connection:
        with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as refused:
            pika.BlockingConnection(pika.URLParameters(url))
        assert (
            f"NOT_ALLOWED - connection refused for user '{user}': user connection limit (1) is reached"
            in str(refused.value)
        )
        connection.channel()
        connection.channel()
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
            connection.channel()
        assert (closed.value.reply_code, closed.value.reply_text) == (
            530,
            f"NOT_ALLOWED - number of channels opened for user '{user}' has reached the maximum allowed "
            "user limit of (2)",
        )
    # The channel limit counts the user's channels over all its connections.
    assert answer(api.put(f"{limit}/max-connections", json={"value": -1})) == (204, None)
    with pika_connection(url) as first, pika_connection(url) as second:
        first.channel()
        second.channel()
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
            second.channel()
        assert closed.value.reply_code == 530
    assert answer(api.delete(f"{limit}/max-channels")) == (204, None)
    assert answer(api.delete(f"{limit}/max-channels")) == (204, None)
    with pika_connection(url) as connection:
        for _ in range(3):
            connection.channel()
    with httpx.Client(base_url=managed.management_url, auth=("writes-manager", "manager-secret"),
                      headers=CLOSE) as manager:  # fmt: skip
        assert shown["user"] in {item["user"] for item in manager.get("/api/user-limits").json()}
        assert answer(manager.put(f"{limit}/max-channels", json={"value": 1})) == (401, NOT_ADMIN)
    api.delete(f"/api/users/{user}")


@pytest.mark.parametrize("user", USERS, ids=lambda u: u.tags[0])
def test_only_administrators_change_vhosts_users_and_permissions(managed: Broker, user: ExtraUser) -> None:
    # RabbitMQ drops a kept-alive connection after some of its 401 answers: one connection per request.
    with httpx.Client(
        base_url=managed.management_url, auth=(user.name, user.password), timeout=10, headers=CLOSE
    ) as client:
        for method, path, body in (
            ("PUT", f"/api/vhosts/{unique('denied')}", {}),
            ("DELETE", "/api/vhosts/%2F", None),
            ("PUT", f"/api/users/{unique('denied')}", {"password": "x", "tags": ""}),
            ("DELETE", "/api/users/guest", None),
            ("PUT", "/api/permissions/%2F/guest", {"configure": ".*", "write": ".*", "read": ".*"}),
            ("GET", "/api/permissions", None),
            ("PUT", "/api/vhost-limits/%2F/max-queues", {"value": 100}),
        ):
            response = client.request(method, path, json=body)
            assert (method, path, *answer(response)) == (method, path, 401, NOT_ADMIN)
        # Their vhost's queues they may declare and delete, as over AMQP.
        queue = unique("tagged-q")
        assert client.put(f"/api/queues/%2F/{queue}", json={}).status_code == 201
        assert client.delete(f"/api/queues/%2F/{queue}").status_code == 204


def test_bad_bodies_are_400_not_json(api: httpx.Client) -> None:
    for body in (b"not json", b"[1]", b"{"):
        response = api.put(
            f"/api/queues/%2F/{unique('bad-body')}",
            content=body,
            headers={"content-type": "application/json"},
        )
        assert answer(response) == (400, {"error": "bad_request", "reason": "not_json"})
    response = api.put(f"/api/queues/%2F/{unique('bad-body')}", content=b'"text"')
    assert answer(response) == (
        400,
        {
            "error": "bad_request",
            "reason": "invalid payload: the request body JSON-decoded to a string. "
            "Is the input doubly-JSON-encoded?",
        },
    )
    # Unknown fields are ignored, as RabbitMQ ignores them.
    name = unique("extra-fields")
    assert api.put(f"/api/exchanges/%2F/{name}", json={"type": "direct", "bogus": 1}).status_code == 201
    api.delete(f"/api/exchanges/%2F/{name}")


def test_changes_made_over_http_survive_a_restart(private_broker: Any) -> None:
    broker = private_broker(management=True, users=USERS)
    vhost, user, queue = unique("kept-vhost"), unique("kept-user"), unique("kept-queue")
    with httpx.Client(
        base_url=broker.management_url, auth=GUEST, timeout=10, headers={"connection": "close"}
    ) as api:
        assert api.put(f"/api/vhosts/{vhost}", json={}).status_code == 201
        assert (
            api.put(f"/api/users/{user}", json={"password": "kept-pw", "tags": "management"}).status_code
            == 201
        )
        permission = {"configure": "^kept", "write": ".*", "read": ".*"}
        assert api.put(f"/api/permissions/{vhost}/{user}", json=permission).status_code == 201
        assert api.put(f"/api/vhost-limits/{vhost}/max-queues", json={"value": 5}).status_code == 204
        assert api.put(f"/api/user-limits/{user}/max-channels", json={"value": 7}).status_code == 204
        assert api.put(f"/api/queues/{vhost}/{queue}", json={"durable": True}).status_code == 201
        body = {
            "routing_key": queue,
            "payload": "kept",
            "payload_encoding": "string",
            "properties": {"delivery_mode": 2},
        }
        assert api.post(f"/api/exchanges/{vhost}/amq.default/publish", json=body).json() == {"routed": True}
        assert api.delete("/api/users/writes-policy").status_code == 204  # a user the broker started with
    broker.restart()
    with httpx.Client(
        base_url=broker.management_url, auth=GUEST, timeout=10, headers={"connection": "close"}
    ) as api:
        assert api.get(f"/api/vhosts/{vhost}").status_code == 200
        assert api.get(f"/api/users/{user}").json()["tags"] == ["management"]
        assert api.get(f"/api/permissions/{vhost}/{user}").json() == {
            "user": user,
            "vhost": vhost,
            **permission,
        }
        assert api.get(f"/api/vhost-limits/{vhost}").json() == [{"vhost": vhost, "value": {"max-queues": 5}}]
        assert api.get(f"/api/user-limits/{user}").json() == [{"user": user, "value": {"max-channels": 7}}]
        # The broker's own definitions (its configuration; RabbitMQ's load_definitions) apply again at start.
        assert api.get("/api/users/writes-policy").status_code == 200
    with pika_connection(amqp_url(broker, vhost, user, "kept-pw")) as connection:
        method, _, message = connection.channel().basic_get(queue, auto_ack=True)
        assert message == b"kept"


def test_another_connections_exclusive_queue_is_locked_over_http(managed: Broker, api: httpx.Client) -> None:
    queue = unique("http-exclusive")
    locked = (
        f"cannot obtain exclusive access to locked queue '{queue}' in vhost '/'. It could be originally "
        "declared on another connection or the exclusive property value does not match that of the original "
        "declaration."
    )
    with pika_connection(managed.url) as connection:
        connection.channel().queue_declare(queue, exclusive=True)
        path = f"/api/queues/%2F/{queue}"
        for response in (
            api.put(path, json={}),
            api.delete(path),
            api.delete(f"{path}/contents"),
            api.post(f"/api/bindings/%2F/e/amq.direct/q/{queue}", json={}),
        ):
            assert answer(response) == (400, {"error": "bad_request", "reason": locked})
        got = api.post(f"{path}/get", json={"count": 1, "ackmode": "ack_requeue_true", "encoding": "auto"})
        assert answer(got) == (400, {"error": "bad_request", "reason": f"405 RESOURCE_LOCKED - {locked}"})


def test_quorum_and_stream_queues_must_be_durable_and_kept_over_http(api: httpx.Client) -> None:
    """The same rule as over AMQP (interop/test_queue_type_properties.py); durable defaults to false."""
    for kind, body, problem in (
        ("quorum", {}, "non-durable"),
        ("stream", {"durable": False}, "non-durable"),
        ("stream", {"durable": True, "auto_delete": True}, "auto-delete"),
    ):
        queue = unique(f"http-{kind}")
        path = f"/api/queues/%2F/{queue}"
        response = api.put(path, json={**body, "arguments": {"x-queue-type": kind}})
        reason = f"invalid property '{problem}' for queue '{queue}' in vhost '/'"
        assert answer(response) == (400, {"error": "bad_request", "reason": reason})
        assert api.get(path).status_code == 404
    queue = unique("http-quorum")
    assert api.put(f"/api/queues/%2F/{queue}", json={"durable": True, "arguments": {"x-queue-type": "quorum"}}
                   ).status_code == 201
    assert answer(api.get(f"/api/queues/%2F/{queue}"))[1]["durable"] is True
    assert api.delete(f"/api/queues/%2F/{queue}").status_code == 204


def test_only_administrators_close_other_users_connections(managed: Broker, api: httpx.Client) -> None:
    with pika_connection(managed.url) as connection:
        name = connection_name(api, connection)
        for user in USERS:
            with httpx.Client(
                base_url=managed.management_url, auth=(user.name, user.password), headers=CLOSE
            ) as other:
                response = other.delete(f"/api/connections/{quote(name, safe='')}")
                assert answer(response) == (
                    401,
                    {"error": "not_authorised", "reason": "User not authorised to access object"},
                )
        assert connection.is_open


def test_permission_changes_apply_to_open_connections(managed: Broker, api: httpx.Client) -> None:
    user = unique("http-live")
    assert api.put(f"/api/users/{user}", json={"password": "pw", "tags": ""}).status_code == 201
    full = {"configure": ".*", "write": ".*", "read": ".*"}
    assert api.put(f"/api/permissions/%2F/{user}", json=full).status_code == 201
    with pika_connection(amqp_url(managed, "/", user, "pw")) as connection:
        channel = connection.channel()
        channel.queue_declare(unique("live-a"), auto_delete=True)
        narrowed = {"configure": "^ok", "write": ".*", "read": ".*"}
        assert api.put(f"/api/permissions/%2F/{user}", json=narrowed).status_code == 204
        refused_queue = unique("live-b")
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
            channel.queue_declare(refused_queue)
        assert (refused.value.reply_code, refused.value.reply_text) == (
            403,
            f"ACCESS_REFUSED - access to queue '{refused_queue}' in vhost '/' refused for user '{user}'",
        )
        assert api.delete(f"/api/permissions/%2F/{user}").status_code == 204
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
            connection.channel().queue_declare("ok-queue")
        assert refused.value.reply_code == 403
        assert connection.is_open
    api.delete(f"/api/users/{user}")


def test_topic_permissions_are_set_listed_enforced_and_deleted(managed: Broker, api: httpx.Client) -> None:
    user = unique("http-topics")
    assert api.put(f"/api/users/{user}", json={"password": "pw", "tags": ""}).status_code == 201
    full = {"configure": ".*", "write": ".*", "read": ".*"}
    assert api.put(f"/api/permissions/%2F/{user}", json=full).status_code == 201
    path = f"/api/topic-permissions/%2F/{user}"
    assert answer(api.put(path, json={"exchange": "amq.topic", "write": "^a"})) == (
        400,
        {"error": "bad_request", "reason": "[{key_missing,read}]"},
    )
    assert answer(
        api.put(
            f"/api/topic-permissions/%2F/{unique('nobody')}",
            json={"exchange": "amq.topic", "write": "", "read": ""},
        )
    ) == (
        400,
        {"error": "bad_request", "reason": "vhost_or_user_not_found"},
    )
    assert answer(api.put(path, json={"exchange": "amq.topic", "write": "^a", "read": "^b"})) == (201, None)
    assert answer(api.put(path, json={"exchange": "amq.topic", "write": "^allowed", "read": "^b"})) == (
        204,
        None,
    )
    shown = {"user": user, "vhost": "/", "exchange": "amq.topic", "write": "^allowed", "read": "^b"}
    assert api.get(path).json() == [shown]
    assert shown in api.get("/api/topic-permissions").json()
    assert api.get(f"/api/users/{user}/topic-permissions").json() == [shown]
    assert shown in api.get("/api/definitions").json()["topic_permissions"]
    with pika_connection(amqp_url(managed, "/", user, "pw")) as connection:
        channel = connection.channel()
        channel.basic_publish("amq.topic", "allowed.key", b"x")
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
            channel.basic_publish("amq.topic", "other.key", b"x")
            channel.queue_declare(unique("after"), auto_delete=True)  # the refusal arrives before this answer
        assert (refused.value.reply_code, refused.value.reply_text) == (
            403,
            f"ACCESS_REFUSED - access to topic 'other.key' in exchange 'amq.topic' in vhost '/' refused for "
            f"user '{user}'",
        )
    assert answer(api.delete(path)) == (204, None)
    assert answer(api.delete(path)) == (404, NOT_FOUND)
    assert answer(api.get(path)) == (404, NOT_FOUND)
    api.delete(f"/api/users/{user}")
