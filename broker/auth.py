"""Users, their passwords and their per-vhost permissions, as RabbitMQ checks them."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from cryptography import x509
from cryptography.x509.oid import NameOID

from leveret.amqp.constants import ACCESS_REFUSED, NOT_ALLOWED
from leveret.amqp.errors import ChannelError, ConnectionLevelError
from leveret.config import Config, User, check_password


@dataclass(frozen=True, slots=True)
class TopicPatterns:
    """A topic permission's routing-key patterns, variables already expanded for one connection."""

    write: re.Pattern[str] | None  # None: the expanded pattern does not compile, so nothing matches
    read: re.Pattern[str] | None


def _topic_pattern(pattern: str, username: str, vhost: str) -> re.Pattern[str] | None:
    # RabbitMQ reads "" as "^$" and replaces {username} and {vhost} as plain text, unescaped.
    expanded = (pattern or "^$").replace("{username}", username).replace("{vhost}", vhost)
    try:
        return re.compile(expanded)
    except re.error:
        return None


@dataclass(frozen=True, slots=True)
class VhostPermissions:
    """Compiled configure/write/read patterns of one user in one vhost, and its topic permissions by
    exchange name."""

    configure: re.Pattern[str]
    write: re.Pattern[str]
    read: re.Pattern[str]
    topics: dict[str, TopicPatterns] = field(default_factory=dict)

    def check_topic(self, username: str, vhost: str, action: str, exchange: str, routing_key: str) -> None:
        """RabbitMQ's topic authorisation of a routing key on a topic exchange (`action` write: publish,
        read: bind); an exchange without a topic permission allows every key."""
        patterns = self.topics.get(exchange)
        if patterns is None:
            return
        pattern = getattr(patterns, action)
        if pattern is None or not pattern.search(routing_key):
            raise ChannelError(
                ACCESS_REFUSED,
                f"access to topic '{routing_key}' in exchange '{exchange}' in vhost '{vhost}' refused for "
                f"user '{username}'",
            )

    def check(self, username: str, vhost: str, action: str, kind: str, name: str) -> None:
        pattern = getattr(self, action)
        # RabbitMQ's default exchange is checked under the name "amq.default".
        resource = name or "amq.default" if kind == "exchange" else name
        # Unanchored, as RabbitMQ matches; an empty pattern grants nothing.
        if pattern.pattern == "" or not pattern.search(resource):
            raise ChannelError(
                ACCESS_REFUSED,
                f"access to {kind} '{resource}' in vhost '{vhost}' refused for user '{username}'",
            )


class Authority:
    def __init__(self, config: Config) -> None:
        self.users: dict[str, User] = {user.name: user for user in config.users}
        self.vhosts = set(config.vhosts)
        self.permissions: dict[tuple[str, str], VhostPermissions] = {
            (p.user, p.vhost): VhostPermissions(
                re.compile(p.configure), re.compile(p.write), re.compile(p.read)
            )
            for p in config.permissions
        }
        self.topic_permissions = config.topic_permissions

    def authenticate(self, username: str, password: str | None, *, from_loopback: bool) -> bool:
        return self.refusal(username, password, from_loopback=from_loopback) is None

    def refusal(self, username: str, password: str | None, *, from_loopback: bool) -> str | None:
        """Why this login is refused, in RabbitMQ's words for its log; None when it is accepted.
        `password` None: the user proved who they are otherwise (EXTERNAL: a verified certificate)."""
        user = self.users.get(username)
        if user is None or (
            password is not None and not check_password(user.password_hash, password, user.hashing_algorithm)
        ):
            return f"user '{username}' - invalid credentials"
        # RabbitMQ's loopback_users: refused from anywhere else, even with the right password.
        if user.loopback_only and not from_loopback:
            return f"user '{username}' can only connect via localhost"
        return None

    def vhost_permissions(self, username: str, vhost: str) -> VhostPermissions:
        if vhost not in self.vhosts:
            raise ConnectionLevelError(NOT_ALLOWED, f"vhost {vhost} not found", 10, 40)
        permissions = self.permissions.get((username, vhost))
        if permissions is None:
            raise ConnectionLevelError(
                NOT_ALLOWED, f"access to vhost '{vhost}' refused for user '{username}'", 10, 40
            )
        topics = {
            topic.exchange: TopicPatterns(
                _topic_pattern(topic.write, username, vhost), _topic_pattern(topic.read, username, vhost)
            )
            for topic in self.topic_permissions
            if topic.user == username and topic.vhost == vhost
        }
        return replace(permissions, topics=topics) if topics else permissions


def certificate_login_name(der: bytes, login_from: str) -> str | None:
    """The username a client certificate gives EXTERNAL, as RabbitMQ's rabbit_ssl:peer_cert_auth_name: its
    subject in RFC 4514 form ("CN=alice,O=example"), or its common name(s) joined by ","; None if the
    certificate cannot be read or has no common name."""
    try:
        subject = x509.load_der_x509_certificate(der).subject
    except ValueError:
        return None
    if login_from == "distinguished_name":
        return subject.rfc4514_string()
    names = [str(attribute.value) for attribute in subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return ",".join(names) or None
