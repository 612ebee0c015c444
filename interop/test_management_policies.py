"""Policies and operator policies over the management API, the same requests and answers on both brokers:
a policy capping a live queue, TTL and dead-lettering by policy, the higher priority winning, an operator
policy's lower limit winning, x-arguments against policies, alternate exchanges by policy, RabbitMQ's 400
texts, who may change them, and that they survive a restart.

Each test's policies match only its own names (a unique prefix), so tests sharing the broker do not meet.
Message counts are read over AMQP (passive declares): RabbitMQ's API shows them a stats interval late.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from pika.adapters.blocking_connection import BlockingChannel

from interop.brokers import Broker, ExtraUser
from interop.clients import pika_connection, unique
from interop.conftest import new_broker

USERS = (
    ExtraUser("policies-manager", "manager-secret", ("management",)),
    ExtraUser("policies-maker", "maker-secret", ("policymaker",)),
)
GUEST = ("guest", "guest")
NOT_FOUND = {"error": "Object Not Found", "reason": "Not Found"}


@pytest.fixture(scope="module")
def managed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    instance = new_broker(tmp_path_factory.mktemp("managed-policies"), management=True, users=USERS)
    try:
        instance.start()
        yield instance
    finally:
        instance.close()


def client(broker: Broker, auth: tuple[str, str] = GUEST) -> httpx.Client:
    # RabbitMQ drops a kept-alive connection after some of its 400 answers: one connection per request.
    return httpx.Client(
        base_url=broker.management_url, auth=auth, timeout=10, headers={"connection": "close"}
    )


@pytest.fixture
def api(managed: Broker) -> Iterator[httpx.Client]:
    with client(managed) as http:
        yield http


@pytest.fixture
def channel(managed: Broker) -> Iterator[BlockingChannel]:
    with pika_connection(managed.url) as connection:
        yield connection.channel()


def answer(response: httpx.Response) -> tuple[int, Any]:
    return response.status_code, response.json() if response.content else None


def eventually(check: Callable[[], Any], timeout: float = 15.0) -> Any:
    """check()'s result once it stops raising AssertionError (a policy reaches RabbitMQ's queues a moment
    after the API answered; its stats later still)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def count(channel: BlockingChannel, queue: str) -> int:
    return channel.queue_declare(queue, passive=True).method.message_count


def settled(channel: BlockingChannel, queue: str, expected: int) -> None:
    """Wait for the queue to hold `expected` messages: RabbitMQ answers a passive declare ahead of the
    publishes still on their way to the queue."""
    eventually(lambda: _equal(count(channel, queue), expected))


def publish(channel: BlockingChannel, queue: str, n: int, body: bytes = b"m") -> None:
    for _ in range(n):
        channel.basic_publish("", queue, body)


def set_policy(api: httpx.Client, name: str, body: dict[str, Any], kind: str = "policies") -> None:
    response = api.put(f"/api/{kind}/%2F/{name}", json=body)
    assert response.status_code in (201, 204), response.text


def queue_record(api: httpx.Client, queue: str, **expected: Any) -> None:
    """Wait until the API shows these fields for the queue."""

    def check() -> None:
        shown = api.get(f"/api/queues/%2F/{queue}").json()
        assert {key: shown.get(key) for key in expected} == expected

    eventually(check)


def test_a_policy_caps_a_live_queue_and_its_removal_lifts_the_cap(
    api: httpx.Client, channel: BlockingChannel
) -> None:
    prefix = unique("pol-cap")
    queue = f"{prefix}-q"
    channel.queue_declare(queue)
    publish(channel, queue, 5)
    eventually(lambda: _equal(count(channel, queue), 5))
    path = f"/api/policies/%2F/{prefix}"
    body = {"pattern": f"^{prefix}-", "definition": {"max-length": 2}, "apply-to": "queues", "priority": 1}
    assert answer(api.put(path, json=body)) == (201, None)
    assert api.get(path).json() == {
        "vhost": "/", "name": prefix, "pattern": f"^{prefix}-", "apply-to": "queues",
        "definition": {"max-length": 2}, "priority": 1,
    }  # fmt: skip
    assert api.get(path).json() in api.get("/api/policies/%2F").json()
    assert api.get(path).json() in api.get("/api/policies").json()
    eventually(lambda: _equal(count(channel, queue), 2))  # the oldest dropped at once
    queue_record(
        api, queue, policy=prefix, operator_policy=None, effective_policy_definition={"max-length": 2}
    )
    publish(channel, queue, 3)
    settled(channel, queue, 2)
    assert answer(api.put(path, json=body | {"definition": {"max-length": 3}})) == (204, None)
    publish(channel, queue, 3)
    eventually(lambda: _equal(count(channel, queue), 3))
    assert answer(api.delete(path)) == (204, None)
    assert answer(api.get(path)) == (404, NOT_FOUND)
    assert answer(api.delete(path)) == (404, NOT_FOUND)
    queue_record(api, queue, policy=None, effective_policy_definition={})
    publish(channel, queue, 3)
    settled(channel, queue, 6)
    channel.queue_delete(queue)


def _equal(value: Any, expected: Any) -> None:
    assert value == expected


def test_message_ttl_by_policy(api: httpx.Client, channel: BlockingChannel) -> None:
    prefix = unique("pol-ttl")
    queue = f"{prefix}-q"
    set_policy(api, prefix, {"pattern": f"^{prefix}-", "definition": {"message-ttl": 300}})
    try:
        channel.queue_declare(queue)
        queue_record(api, queue, policy=prefix)
        publish(channel, queue, 3)
        eventually(lambda: _equal(count(channel, queue), 0))
    finally:
        api.delete(f"/api/policies/%2F/{prefix}")
    publish(channel, queue, 1)  # without the policy, no TTL
    time.sleep(0.6)
    settled(channel, queue, 1)
    channel.queue_delete(queue)


def test_dead_lettering_by_policy(api: httpx.Client, channel: BlockingChannel) -> None:
    prefix = unique("pol-dlx")
    source, target = f"{prefix}-src", f"{prefix}-dead"
    channel.queue_declare(target)
    definition = {"dead-letter-exchange": "", "dead-letter-routing-key": target}
    set_policy(api, prefix, {"pattern": f"^{prefix}-src$", "definition": definition})
    try:
        channel.queue_declare(source)
        queue_record(api, source, policy=prefix, effective_policy_definition=definition)
        channel.basic_publish("", source, b"to be rejected")
        method, _, _ = eventually(lambda: _got(channel.basic_get(source)))
        channel.basic_reject(method.delivery_tag, requeue=False)
        _, properties, body = eventually(lambda: _got(channel.basic_get(target, auto_ack=True)))
        assert body == b"to be rejected"
        death = properties.headers["x-death"][0]
        assert (death["queue"], death["reason"]) == (source, "rejected")
    finally:
        api.delete(f"/api/policies/%2F/{prefix}")
    channel.queue_delete(source)
    channel.queue_delete(target)


def _got(got: tuple[Any, Any, Any]) -> tuple[Any, Any, Any]:
    assert got[0] is not None
    return got


def test_the_policy_with_the_highest_priority_applies(api: httpx.Client, channel: BlockingChannel) -> None:
    prefix = unique("pol-prio")
    queue = f"{prefix}-q"
    channel.queue_declare(queue)
    pattern = f"^{prefix}-"
    set_policy(api, f"{prefix}-low", {"pattern": pattern, "definition": {"max-length": 4}, "priority": 1})
    set_policy(api, f"{prefix}-high", {"pattern": pattern, "definition": {"max-length": 1}, "priority": 7})
    set_policy(api, f"{prefix}-ex", {"pattern": pattern, "definition": {"max-length": 0}, "priority": 9,
                                     "apply-to": "exchanges"})  # fmt: skip
    try:
        queue_record(api, queue, policy=f"{prefix}-high", effective_policy_definition={"max-length": 1})
        publish(channel, queue, 3)
        settled(channel, queue, 1)
        assert answer(api.delete(f"/api/policies/%2F/{prefix}-high")) == (204, None)
        queue_record(api, queue, policy=f"{prefix}-low")
        publish(channel, queue, 5)
        settled(channel, queue, 4)
    finally:
        for name in ("low", "high", "ex"):
            api.delete(f"/api/policies/%2F/{prefix}-{name}")
    channel.queue_delete(queue)


def test_an_operator_policy_sets_the_lower_limit(api: httpx.Client, channel: BlockingChannel) -> None:
    prefix = unique("pol-op")
    strict, loose = f"{prefix}-strict", f"{prefix}-loose"
    set_policy(api, prefix, {"pattern": f"^{prefix}-", "definition": {"max-length": 5, "message-ttl": 60000}})
    set_policy(
        api, f"{prefix}-a", {"pattern": f"^{strict}$", "definition": {"max-length": 2}}, "operator-policies"
    )
    set_policy(
        api, f"{prefix}-b", {"pattern": f"^{loose}$", "definition": {"max-length": 9}}, "operator-policies"
    )
    try:
        op = api.get(f"/api/operator-policies/%2F/{prefix}-a").json()
        assert op == {"vhost": "/", "name": f"{prefix}-a", "pattern": f"^{strict}$", "apply-to": "all",
                      "definition": {"max-length": 2}, "priority": 0}  # fmt: skip
        assert op in api.get("/api/operator-policies").json()
        assert op in api.get("/api/operator-policies/%2F").json()
        for queue in (strict, loose):
            channel.queue_declare(queue)
        queue_record(api, strict, policy=prefix, operator_policy=f"{prefix}-a",
                     effective_policy_definition={"max-length": 2, "message-ttl": 60000})  # fmt: skip
        queue_record(api, loose, policy=prefix, operator_policy=f"{prefix}-b",
                     effective_policy_definition={"max-length": 5, "message-ttl": 60000})  # fmt: skip
        publish(channel, strict, 6)
        publish(channel, loose, 6)
        settled(channel, strict, 2)
        settled(channel, loose, 5)
        assert answer(api.delete(f"/api/operator-policies/%2F/{prefix}-a")) == (204, None)
        queue_record(api, strict, operator_policy=None)
        publish(channel, strict, 6)
        settled(channel, strict, 5)
    finally:
        api.delete(f"/api/policies/%2F/{prefix}")
        for name in ("a", "b"):
            api.delete(f"/api/operator-policies/%2F/{prefix}-{name}")
    for queue in (strict, loose):
        channel.queue_delete(queue)


def test_x_arguments_against_policies(api: httpx.Client, channel: BlockingChannel) -> None:
    """A queue's own dead-letter exchange wins over a policy's; for length limits the lower one does,
    the argument's or the policy's; an operator policy's lower limit wins over an argument too."""
    prefix = unique("pol-args")
    mine, theirs = f"{prefix}-mine", f"{prefix}-theirs"
    for target in (mine, theirs):
        channel.queue_declare(target)
    definition = {"dead-letter-exchange": "", "dead-letter-routing-key": theirs, "max-length": 3}
    set_policy(api, prefix, {"pattern": f"^{prefix}-src-[ab]$", "definition": definition})
    set_policy(api, prefix, {"pattern": f"^{prefix}-src-op", "definition": {"max-length": 1}},
               "operator-policies")  # fmt: skip
    arguments = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": mine}
    try:
        lower_argument, lower_policy, operator = f"{prefix}-src-a", f"{prefix}-src-b", f"{prefix}-src-op"
        channel.queue_declare(lower_argument, arguments={**arguments, "x-max-length": 2})
        channel.queue_declare(lower_policy, arguments={**arguments, "x-max-length": 10})
        channel.queue_declare(operator, arguments={"x-max-length": 2})
        for queue in (lower_argument, lower_policy):
            queue_record(api, queue, policy=prefix)
        queue_record(api, operator, operator_policy=prefix)
        for queue in (lower_argument, lower_policy, operator):
            publish(channel, queue, 5, queue.encode())
        for queue, expected in ((lower_argument, 2), (lower_policy, 3), (operator, 1)):
            settled(channel, queue, expected)
        # The dropped heads went to the queues' own dead-letter target, not the policy's.
        eventually(lambda: _equal(count(channel, mine), 3 + 2))
        settled(channel, theirs, 0)
    finally:
        api.delete(f"/api/policies/%2F/{prefix}")
        api.delete(f"/api/operator-policies/%2F/{prefix}")
    for queue in (mine, theirs, f"{prefix}-src-a", f"{prefix}-src-b", f"{prefix}-src-op"):
        channel.queue_delete(queue)


def test_an_alternate_exchange_by_policy(api: httpx.Client, channel: BlockingChannel) -> None:
    prefix = unique("pol-ae")
    exchange, caught = f"{prefix}-x", f"{prefix}-caught"
    channel.exchange_declare(exchange, "direct")
    channel.queue_declare(caught)
    channel.exchange_declare(f"{prefix}-ae", "fanout")
    channel.queue_bind(caught, f"{prefix}-ae")
    set_policy(api, prefix, {"pattern": f"^{prefix}-x$", "definition": {"alternate-exchange": f"{prefix}-ae"},
                             "apply-to": "exchanges"})  # fmt: skip
    try:
        eventually(lambda: _equal(api.get(f"/api/exchanges/%2F/{exchange}").json().get("policy"), prefix))
        channel.basic_publish(exchange, "no-binding", b"unroutable")
        _, _, body = eventually(lambda: _got(channel.basic_get(caught, auto_ack=True)))
        assert body == b"unroutable"
    finally:
        api.delete(f"/api/policies/%2F/{prefix}")
    eventually(lambda: _equal("policy" in api.get(f"/api/exchanges/%2F/{exchange}").json(), False))
    channel.basic_publish(exchange, "no-binding", b"dropped")
    channel.basic_publish("", caught, b"marker")
    _, _, body = eventually(lambda: _got(channel.basic_get(caught, auto_ack=True)))
    assert body == b"marker"
    channel.exchange_delete(exchange)
    channel.exchange_delete(f"{prefix}-ae")
    channel.queue_delete(caught)


def _refused(reason: str) -> tuple[int, dict[str, str]]:
    return 400, {"error": "bad_request", "reason": f"Validation failed\n\n{reason}\n"}


ESCAPED_X = "&lt;&lt;\"x\"&gt;&gt;"  # RabbitMQ escapes a policy's texts for HTML: <<"x">>
BAD_POLICIES = [
    ({"max-length": -1}, "-1 is not a valid maximum length"),
    ({"max-length": "x"}, f"{ESCAPED_X} is not a valid maximum length"),
    ({"message-ttl": 1.5}, "1.5 is not a valid message TTL"),
    ({"expires": 0}, "0 is not a valid queue expiry"),
    ({"max-length-bytes": -1}, "-1 is not a valid maximum length in bytes"),
    ({"overflow": "x"}, f"{ESCAPED_X} is not a valid overflow value"),
    ({"dead-letter-exchange": 1}, "1 is not a valid dead letter exchange name"),
    ({"delivery-limit": -1}, "-1 is not a valid delivery limit"),
    ({"alternate-exchange": 1}, "1 is not a valid alternate exchange name"),
    ({"queue-mode": "x"}, f"{ESCAPED_X} is not a valid queue-mode value"),
    ({"foo": 1, "bar": "x"}, f"[{{&lt;&lt;\"bar\"&gt;&gt;,{ESCAPED_X}}},{{&lt;&lt;\"foo\"&gt;&gt;,1}}] "
                             "are not recognised policy settings"),
    ({}, "no policy provided"),
]  # fmt: skip


@pytest.mark.parametrize(("definition", "reason"), BAD_POLICIES)
def test_bad_definitions_get_rabbitmqs_400(
    api: httpx.Client, definition: dict[str, Any], reason: str
) -> None:
    name = unique("pol-bad")
    body = {"pattern": "^x", "definition": definition}
    assert answer(api.put(f"/api/policies/%2F/{name}", json=body)) == _refused(reason)
    assert answer(api.get(f"/api/policies/%2F/{name}")) == (404, NOT_FOUND)


def test_bad_patterns_apply_to_and_priorities_get_rabbitmqs_400(api: httpx.Client) -> None:
    path = f"/api/policies/%2F/{unique('pol-bad')}"
    assert answer(api.put(path, json={"pattern": 1, "definition": {"max-length": 1}})) == _refused(
        "pattern should be a binary but was 1"
    )
    body = {"pattern": "^x", "definition": {"max-length": 1}, "apply-to": "y", "priority": "5"}
    assert answer(api.put(path, json=body)) == _refused(
        "apply-to 'y' unrecognised; should be 'queues', 'exchanges' or 'all'\n"
        "priority should be a number, actually was &lt;&lt;\"5\"&gt;&gt;"
    )


def test_bad_operator_policies_and_missing_fields(api: httpx.Client) -> None:
    name = unique("pol-bad-op")
    path = f"/api/operator-policies/%2F/{name}"
    assert answer(api.put(path, json={"pattern": "^x", "definition": {"dead-letter-exchange": "x"}})) == (
        _refused('[{<<"dead-letter-exchange">>,<<"x">>}] are not recognised policy settings')
    )
    assert answer(api.put(path, json={"pattern": "^x", "definition": {"max-length": "x"}})) == (
        _refused('<<"x">> is not a valid maximum length')
    )
    assert answer(api.put(f"/api/policies/%2F/{name}", json={"pattern": "^x"})) == (
        400, {"error": "bad_request", "reason": "[{key_missing,definition}]"}
    )  # fmt: skip
    assert answer(api.put(f"/api/policies/no-such-vhost/{name}", json={"pattern": "^x",
                          "definition": {"max-length": 1}})) == (
        404, {"error": "not_found", "reason": "vhost_not_found"}
    )  # fmt: skip
    assert answer(api.get("/api/policies/no-such-vhost")) == (404, NOT_FOUND)
    assert answer(api.delete(path)) == (404, NOT_FOUND)


def test_who_may_read_and_change_policies(managed: Broker, api: httpx.Client) -> None:
    name = unique("pol-who")
    body = {"pattern": f"^{name}", "definition": {"max-length": 1}}
    not_authorised = {"error": "not_authorised", "reason": "User not authorised to access object"}
    not_admin = {"error": "not_authorised", "reason": "Not administrator user"}
    with client(managed, ("policies-manager", "manager-secret")) as manager:
        assert answer(manager.put(f"/api/policies/%2F/{name}", json=body)) == (401, not_authorised)
        assert answer(manager.put(f"/api/operator-policies/%2F/{name}", json=body)) == (401, not_admin)
    with client(managed, ("policies-maker", "maker-secret")) as maker:
        assert answer(maker.put(f"/api/operator-policies/%2F/{name}", json=body)) == (401, not_admin)
        assert answer(maker.put(f"/api/policies/%2F/{name}", json=body)) == (201, None)
        assert maker.get(f"/api/policies/%2F/{name}").json()["definition"] == {"max-length": 1}
    with client(managed, ("policies-manager", "manager-secret")) as manager:
        assert answer(manager.get(f"/api/policies/%2F/{name}")) == (401, not_authorised)
        listed = manager.get("/api/policies").json()
        assert [p["name"] for p in listed if p["name"] == name] == [name]
        assert answer(manager.delete(f"/api/policies/%2F/{name}")) == (401, not_authorised)
    with client(managed, ("policies-maker", "maker-secret")) as maker:
        assert answer(maker.delete(f"/api/policies/%2F/{name}")) == (204, None)


def test_policies_survive_a_restart(private_broker: Any) -> None:
    broker = private_broker(management=True)
    prefix = unique("pol-kept")
    queue = f"{prefix}-q"
    with client(broker) as api:
        set_policy(api, prefix, {"pattern": f"^{prefix}-", "definition": {"max-length": 2}, "priority": 3})
        set_policy(
            api, prefix, {"pattern": f"^{prefix}-", "definition": {"max-length": 1}}, "operator-policies"
        )
        assert api.put(f"/api/queues/%2F/{queue}", json={"durable": True}).status_code == 201
    broker.restart()
    with client(broker) as api:
        assert api.get(f"/api/policies/%2F/{prefix}").json()["priority"] == 3
        assert api.get(f"/api/operator-policies/%2F/{prefix}").json()["definition"] == {"max-length": 1}
        queue_record(api, queue, policy=prefix, operator_policy=prefix,
                     effective_policy_definition={"max-length": 1})  # fmt: skip
    with pika_connection(broker.url) as connection:
        channel = connection.channel()
        publish(channel, queue, 3)
        settled(channel, queue, 1)


def test_definitions_carry_policies(api: httpx.Client) -> None:
    prefix = unique("pol-defs")
    definition = {"message-ttl": 1000, "dead-letter-exchange": "amq.fanout"}
    policy = {"vhost": "/", "name": prefix, "pattern": f"^{prefix}-", "apply-to": "queues",
              "definition": definition, "priority": 2}  # fmt: skip
    assert api.post("/api/definitions", json={"policies": [policy]}).status_code in (201, 204)
    try:
        assert api.get(f"/api/policies/%2F/{prefix}").json() == policy
        assert policy in api.get("/api/definitions").json()["policies"]
        assert policy in api.get("/api/definitions/%2F").json()["policies"]  # with its vhost, unlike queues
    finally:
        api.delete(f"/api/policies/%2F/{prefix}")
