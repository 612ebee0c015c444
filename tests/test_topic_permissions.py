"""Topic permissions as RabbitMQ's internal backend checks them: per topic exchange, routing keys against
the write (publish) or read (bind) pattern, {username} and {vhost} replaced as plain text."""

from __future__ import annotations

import pytest

from leveret.amqp.errors import ChannelError
from leveret.broker.auth import Authority, VhostPermissions
from leveret.config import Config, Permission, TopicPermission, User, hash_password


def _permissions(username: str, topic: TopicPermission) -> VhostPermissions:
    users = (User(username, hash_password("secret")),)
    config = Config(
        vhosts=("/", "prod"), users=users, permissions=(Permission(username, "prod"),),
        topic_permissions=(topic,),
    )
    return Authority(config).vhost_permissions(username, "prod")


def test_variables_are_expanded_per_connection() -> None:
    rule = TopicPermission("ann", "prod", "amq.topic", write=r"^{vhost}\.{username}\.")
    permissions = _permissions("ann", rule)
    permissions.check_topic("ann", "prod", "write", "amq.topic", "prod.ann.orders")
    with pytest.raises(ChannelError) as refused:
        permissions.check_topic("ann", "prod", "write", "amq.topic", "prod.bob.orders")
    assert refused.value.code == 403
    assert refused.value.text == (
        "access to topic 'prod.bob.orders' in exchange 'amq.topic' in vhost 'prod' refused for user 'ann'"
    )
    permissions.check_topic("ann", "prod", "write", "other", "anything")  # no entry: every key


def test_an_empty_pattern_matches_only_the_empty_key() -> None:
    permissions = _permissions("ann", TopicPermission("ann", "prod", "amq.topic", read=""))
    permissions.check_topic("ann", "prod", "read", "amq.topic", "")
    with pytest.raises(ChannelError):
        permissions.check_topic("ann", "prod", "read", "amq.topic", "a")


def test_a_pattern_that_breaks_once_expanded_matches_nothing() -> None:
    permissions = _permissions("a(b", TopicPermission("a(b", "prod", "amq.topic", write="^{username}"))
    with pytest.raises(ChannelError):
        permissions.check_topic("a(b", "prod", "write", "amq.topic", "a(b.x")
