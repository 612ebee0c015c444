"""Policies without sockets: RabbitMQ's checks and texts, which policy applies, how a policy, an operator
policy and x-arguments combine, and live queues following changes (broker/policies.py, vhost.py,
Lifecycle.settings_changed). The client-visible behaviour on both brokers is in
interop/test_management_policies.py."""

from __future__ import annotations

from typing import Any

import pytest

from leveret.broker.admin import AdminError
from leveret.broker.policies import (
    PolicyError,
    best,
    effective_definition,
    parse_policy,
    queue_arguments,
)
from tests.lifecycle_support import clocked_node, declare_queue, fanout_to, get
from tests.test_session import connect


def policy(name: str = "p", operator: bool = False, **body: Any) -> Any:
    return parse_policy(
        "/", name, {"pattern": ".*", "definition": {"max-length": 1}} | body, operator=operator
    )


def test_a_policy_is_parsed_with_rabbitmqs_defaults() -> None:
    parsed = parse_policy("/", "p", {"pattern": "^a", "definition": {"max-length": 1}}, operator=False)
    assert parsed.record() == {
        "vhost": "/", "name": "p", "pattern": "^a", "apply-to": "all", "definition": {"max-length": 1},
        "priority": 0,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("body", "operator", "reason"),
    [
        ({"definition": {"max-length": -1, "message-ttl": -1}}, False, "-1 is not a valid maximum length"),
        ({"definition": {"message-ttl": 315_360_000_001}}, False, "315360000001 is not a valid message TTL"),
        ({"definition": {"max-length": True}}, False, "true is not a valid maximum length"),
        ({"definition": {"max-length": "x"}}, True, '<<"x">> is not a valid maximum length'),
        ({"definition": {"overflow": "drop-head"}}, True,
         '[{<<"overflow">>,<<"drop-head">>}] are not recognised policy settings'),
        ({"definition": {"ha-mode": "bogus"}}, False,
         "&lt;&lt;\"bogus\"&gt;&gt; is not a valid ha-mode value"),
        ({"definition": "x"}, False, "&lt;&lt;\"x\"&gt;&gt; is not a valid policy definition"),
        ({"pattern": "["}, False,
         'pattern should be regular expression but is invalid: '
         '{"missing terminating ] for character class",\n' + " " * 54 + "1}"),
    ],
)  # fmt: skip
def test_bad_policies_get_rabbitmqs_texts(body: dict[str, Any], operator: bool, reason: str) -> None:
    with pytest.raises(PolicyError) as refused:
        policy(operator=operator, **body)
    assert str(refused.value) == f"Validation failed\n\n{reason}\n"


def test_mirroring_keys_are_accepted_and_change_nothing() -> None:
    mirrored = policy(definition={"ha-mode": "exactly", "ha-params": 2, "ha-sync-mode": "automatic"})
    assert queue_arguments({}, mirrored.definition) == {}


def test_the_highest_priority_matching_policy_applies_ties_by_name() -> None:
    low, high = policy("low", priority=1), policy("high", priority=5)
    other = policy("other", pattern="^zzz", priority=9)
    exchanges = policy("ex", **{"apply-to": "exchanges", "priority": 10})
    assert best([low, high, other, exchanges], "queues", "q") is high
    assert best([low, other], "queues", "q") is low
    assert best([exchanges], "exchanges", "x") is exchanges
    assert best([policy("b"), policy("a")], "queues", "q").name == "a"
    assert best([other], "queues", "q") is None


def test_the_lower_limit_wins_between_policy_and_operator_policy() -> None:
    user = policy(definition={"max-length": 5, "message-ttl": 100, "dead-letter-exchange": "d"})
    operator = policy(operator=True, definition={"max-length": 2, "message-ttl": 1000, "expires": 9})
    assert effective_definition(user, operator) == {
        "max-length": 2, "message-ttl": 100, "dead-letter-exchange": "d", "expires": 9,
    }  # fmt: skip
    assert effective_definition(None, operator) == operator.definition
    assert effective_definition(None, None) == {}


def test_x_arguments_against_a_policy() -> None:
    definition = {"max-length": 5, "dead-letter-exchange": "policy-dlx", "delivery-limit": 3}
    classic = {"x-max-length": 9, "x-dead-letter-exchange": "own-dlx"}
    # The lower limit, the argument's own exchange; delivery-limit is not a classic queue's.
    assert queue_arguments(classic, definition) == {"x-max-length": 5, "x-dead-letter-exchange": "own-dlx"}
    quorum = {"x-queue-type": "quorum", "x-delivery-limit": 1}
    assert queue_arguments(quorum, definition) == {
        **quorum, "x-max-length": 5, "x-dead-letter-exchange": "policy-dlx",
    }  # fmt: skip


def test_a_live_queue_follows_a_policy_and_its_removal() -> None:
    node, clock = clocked_node()
    client = connect(node)
    fanout_to(client, "dlx", "dead")
    declare_queue(client, "q")
    for n in range(4):
        client.publish(1, b"m%d" % n, routing_key="q")
    definition = {"max-length": 2, "dead-letter-exchange": "dlx", "message-ttl": 1000}
    node.admin.set_policy("/", "cap", {"pattern": "^q$", "definition": definition})
    queue = node.vhosts["/"].queues["q"]
    assert queue.policy.name == "cap" and queue.lifecycle is not None
    assert [e.message.body for e in queue.ready] == [b"m2", b"m3"]
    assert [e.message.body for e in node.vhosts["/"].queues["dead"].ready] == [b"m0", b"m1"]
    client.publish(1, b"expiring", routing_key="q")  # TTL from the policy from now on
    clock.advance(1.5)
    # m2 went for the cap; m3 came before the TTL and keeps none, and messages expire at the head only.
    assert [e.message.body for e in queue.ready] == [b"m3", b"expiring"]
    assert get(client, "q")[2] == b"m3"
    assert get(client, "q") is None
    dead = [e.message.body for e in node.vhosts["/"].queues["dead"].ready]
    assert dead == [b"m0", b"m1", b"m2", b"expiring"]
    assert node.admin.clear_policy("/", "cap")
    assert queue.policy is None and queue.effective_arguments == {}
    for n in range(3):
        client.publish(1, b"n%d" % n, routing_key="q")
    clock.advance(2)
    assert len(queue.ready) == 3  # nothing expires, nothing is dropped
    assert not node.admin.clear_policy("/", "cap")


def test_an_operator_policy_and_a_new_queue() -> None:
    node, _ = clocked_node()
    client = connect(node)
    node.admin.set_policy("/", "op", {"pattern": "^q", "definition": {"max-length": 1}}, operator=True)
    declare_queue(client, "q1", **{"x-max-length": 3})
    for n in range(3):
        client.publish(1, b"m%d" % n, routing_key="q1")
    assert [e.message.body for e in node.vhosts["/"].queues["q1"].ready] == [b"m2"]
    assert get(client, "q1") is not None
    with pytest.raises(AdminError):
        node.admin.set_policy("/", "op", {"pattern": "^q", "definition": {"overflow": "reject-publish"}},
                              operator=True)  # fmt: skip
    with pytest.raises(AdminError) as missing:
        node.admin.set_policy("nope", "p", {"pattern": "^q", "definition": {"max-length": 1}})
    assert missing.value.missing


def test_an_alternate_exchange_by_policy_yields_to_the_argument() -> None:
    node, _ = clocked_node()
    vhost = node.vhosts["/"]
    client = connect(node)
    fanout_to(client, "ae-policy", "caught-policy")
    fanout_to(client, "ae-own", "caught-own")
    for name, arguments in (("plain", {}), ("own", {"alternate-exchange": "ae-own"})):
        vhost.declare_exchange(
            name, "direct", durable=False, auto_delete=False, internal=False, arguments=arguments
        )
    definition = {"alternate-exchange": "ae-policy"}
    node.admin.set_policy(
        "/", "ae", {"pattern": "^(plain|own)$", "definition": definition, "apply-to": "exchanges"}
    )
    client.publish(1, b"to-plain", exchange="plain", routing_key="nowhere")
    client.publish(1, b"to-own", exchange="own", routing_key="nowhere")
    assert [e.message.body for e in vhost.queues["caught-policy"].ready] == [b"to-plain"]
    assert [e.message.body for e in vhost.queues["caught-own"].ready] == [b"to-own"]
    assert vhost.exchanges["plain"].policy.name == "ae"
