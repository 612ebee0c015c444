"""Users, vhosts, permissions and vhost limits changed at run time, as RabbitMQ's management API and
definitions import change them.

The configuration creates the node's users, vhosts and permissions at start; what is changed here is
recorded as overrides (a record, or a deletion) and saved with the durable definitions, so that a restart
brings back what was made at run time. For what the configuration names, the configuration wins at each
start, as RabbitMQ's load_definitions does. Synchronous, like the rest of the domain.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol

from leveret.amqp.constants import CONNECTION_FORCED
from leveret.amqp.errors import ConnectionLevelError
from leveret.broker.auth import VhostPermissions
from leveret.broker.policies import PolicyError, parse_policy
from leveret.config import TopicPermission, User
from leveret.config.passwords import ALGORITHMS, SHA256, is_password_hash

if TYPE_CHECKING:
    from leveret.broker.auth import Authority
    from leveret.broker.vhost import VirtualHost
    from leveret.config import Config


class Node(Protocol):
    """What the administration changes (broker/node.py's Node, which holds one)."""

    @property
    def config(self) -> Config: ...

    @property
    def authority(self) -> Authority: ...

    @property
    def vhosts(self) -> dict[str, VirtualHost]: ...

    @property
    def connections(self) -> set[Any]: ...

    def add_vhost(self, name: str) -> VirtualHost: ...

    def definitions_changed(self) -> None: ...

VHOST_LIMITS = ("max-connections", "max-queues")
USER_LIMITS = ("max-connections", "max-channels")
# RabbitMQ's default loopback_users: a guest user made at run time is loopback-only too.
DEFAULT_LOOPBACK_USERS = frozenset({"guest"})


class AdminError(Exception):
    """A refused change. `missing`: what it names does not exist (HTTP 404), else the request is bad (400).
    `reason` is RabbitMQ's: a text, or a JSON list as its management API renders Erlang terms."""

    def __init__(self, reason: Any, *, missing: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.missing = missing


def compile_permissions(configure: str, write: str, read: str) -> VhostPermissions:
    patterns = []
    for pattern in (configure, write, read):
        try:
            patterns.append(re.compile(pattern))
        except re.error as exc:
            raise AdminError(["invalid_regexp", pattern, str(exc)]) from None
    return VhostPermissions(patterns[0], patterns[1], patterns[2])


# An empty pattern grants nothing (RabbitMQ's meaning of "").
NOTHING_PERMITTED = compile_permissions("", "", "")


class Administration:
    def __init__(self, node: Node) -> None:
        self.node = node
        # The overrides of the configuration, by name: a record, or None for a deletion.
        self._users: dict[str, dict[str, Any] | None] = {}
        self._vhosts: dict[str, bool] = {}
        self._permissions: dict[tuple[str, str], dict[str, str] | None] = {}
        # Topic permissions by (user, vhost, exchange): a record, or None for a deletion.
        self._topics: dict[tuple[str, str, str], dict[str, str] | None] = {}
        # RabbitMQ's user limits by user ("max-connections", "max-channels"); negative: no limit.
        self.user_limits: dict[str, dict[str, int]] = {}

    # ---- vhosts ---------------------------------------------------------------------------------

    def put_vhost(
        self,
        name: str,
        acting_user: str | None = None,
        description: str | None = None,
        tags: tuple[str, ...] | None = None,
    ) -> bool:
        """Create the vhost if it does not exist (True when created) and set the metadata given. As RabbitMQ's
        API does, the user who creates it gets full permissions in it."""
        created = name not in self.node.vhosts
        if created:
            self.node.add_vhost(name)
            self._vhosts[name] = True
            if acting_user is not None and acting_user in self.node.authority.users:
                self.set_permissions(acting_user, name, ".*", ".*", ".*")
        vhost = self.node.vhosts[name]
        if description is not None:
            vhost.description = description
        if tags is not None:
            vhost.tags = tags
        if created or description is not None or tags is not None:
            self.node.definitions_changed()
        return created

    def delete_vhost(self, name: str) -> bool:
        """Delete the vhost, its queues (and their messages) and its permissions; its connections are closed
        with 320, as RabbitMQ closes them (its text is "is deleted", or "is down" when the vhost's processes
        stop first). False when there is no such vhost."""
        vhost = self.node.vhosts.get(name)
        if vhost is None:
            return False
        down = ConnectionLevelError(CONNECTION_FORCED, f"vhost '{name}' is deleted")
        for session in list(self.node.connections):
            if session.vhost is vhost:
                session.close(down)
        for queue in list(vhost.queues.values()):
            vhost.remove_queue(queue)
        del self.node.vhosts[name]
        self.node.authority.vhosts.discard(name)
        for user, vhost_name in [key for key in self.node.authority.permissions if key[1] == name]:
            self.clear_permissions(user, vhost_name)
        for user in {t.user for t in self.node.authority.topic_permissions if t.vhost == name}:
            self.clear_topic_permissions(user, name)
        self._vhosts[name] = False
        self.node.definitions_changed()
        return True

    # ---- users ----------------------------------------------------------------------------------

    def put_user(self, name: str, password_hash: str, tags: tuple[str, ...], algorithm: str = SHA256) -> bool:
        """Create or replace a user (True when created). An empty hash makes a user that cannot log in with
        a password, as in RabbitMQ."""
        if algorithm not in ALGORITHMS:
            raise AdminError(["unsupported_hashing_algorithm", algorithm])
        if password_hash and not is_password_hash(password_hash, algorithm):
            raise AdminError(["not_base64", password_hash])
        users = self.node.authority.users
        existing = users.get(name)
        loopback = existing.loopback_only if existing is not None else name in DEFAULT_LOOPBACK_USERS
        user = User(name, password_hash, tags, loopback_only=loopback, hashing_algorithm=algorithm)
        users[name] = user
        self._users[name] = user_record(user)
        self.node.definitions_changed()
        return existing is None

    def delete_user(self, name: str) -> bool:
        """Delete a user and its permissions; False when there is no such user."""
        if self.node.authority.users.pop(name, None) is None:
            return False
        for user, vhost in [key for key in self.node.authority.permissions if key[0] == name]:
            self.clear_permissions(user, vhost)
        for vhost in {t.vhost for t in self.node.authority.topic_permissions if t.user == name}:
            self.clear_topic_permissions(name, vhost)
        self.user_limits.pop(name, None)
        self._users[name] = None
        self.node.definitions_changed()
        return True

    # ---- permissions ----------------------------------------------------------------------------

    def set_permissions(self, user: str, vhost: str, configure: str, write: str, read: str) -> bool:
        """Set a user's permissions in a vhost (True when it had none). As in RabbitMQ, the user's open
        connections check with the new ones from now on (a channel that published to an exchange already
        keeps publishing to it: it checks an exchange once)."""
        if user not in self.node.authority.users or vhost not in self.node.vhosts:
            raise AdminError("vhost_or_user_not_found")
        compiled = compile_permissions(configure, write, read)
        permissions = self.node.authority.permissions
        created = (user, vhost) not in permissions
        permissions[(user, vhost)] = compiled
        self.refresh_connections(user, vhost)
        self._permissions[(user, vhost)] = {"configure": configure, "write": write, "read": read}
        self.node.definitions_changed()
        return created

    def clear_permissions(self, user: str, vhost: str) -> bool:
        """Remove them; the user's open connections in the vhost stay open and are refused everything."""
        if self.node.authority.permissions.pop((user, vhost), None) is None:
            return False
        self.refresh_connections(user, vhost)
        self._permissions[(user, vhost)] = None
        self.node.definitions_changed()
        return True

    def set_topic_permission(self, user: str, vhost: str, exchange: str, write: str, read: str) -> bool:
        """Set a user's topic permission on one exchange of a vhost (True when the user had none there)."""
        if user not in self.node.authority.users or vhost not in self.node.vhosts:
            raise AdminError("vhost_or_user_not_found")
        for pattern in (write, read):
            try:
                re.compile(pattern.replace("{username}", user).replace("{vhost}", vhost))
            except re.error as exc:
                raise AdminError(["invalid_regexp", pattern, str(exc)]) from None
        authority = self.node.authority
        created = not any(t.user == user and t.vhost == vhost for t in authority.topic_permissions)
        kept = [
            t for t in authority.topic_permissions if (t.user, t.vhost, t.exchange) != (user, vhost, exchange)
        ]
        authority.topic_permissions = (*kept, TopicPermission(user, vhost, exchange, write, read))
        self._topics[(user, vhost, exchange)] = {"write": write, "read": read}
        self.refresh_connections(user, vhost)
        self.node.definitions_changed()
        return created

    def clear_topic_permissions(self, user: str, vhost: str) -> bool:
        """Remove all of a user's topic permissions in a vhost; False when there were none."""
        authority = self.node.authority
        gone = [t for t in authority.topic_permissions if t.user == user and t.vhost == vhost]
        if not gone:
            return False
        authority.topic_permissions = tuple(t for t in authority.topic_permissions if t not in gone)
        for topic in gone:
            self._topics[(user, vhost, topic.exchange)] = None
        self.refresh_connections(user, vhost)
        self.node.definitions_changed()
        return True

    def refresh_connections(self, user: str, vhost: str) -> None:
        """The user's open connections in the vhost check with its permissions as they are now."""
        authority = self.node.authority
        for session in self.node.connections:
            if session.username == user and session.vhost.name == vhost:
                if (user, vhost) in authority.permissions:
                    session.permissions = authority.vhost_permissions(user, vhost)
                else:
                    session.permissions = NOTHING_PERMITTED

    # ---- vhost limits ---------------------------------------------------------------------------

    def set_vhost_limit(self, vhost: str, name: str, value: Any) -> None:
        limits = self._vhost(vhost).limits
        if name not in VHOST_LIMITS:
            raise AdminError(
                f"Validation failed\n\nUnrecognised terms [{{{erlang_binary(name)},{value}}}] in limits\n"
            )
        if type(value) is not int:
            raise AdminError(
                f"Validation failed\n\n{name} should be a number, actually was {erlang_term(value)}\n"
            )
        limits[name] = value
        self.node.definitions_changed()

    def clear_vhost_limit(self, vhost: str, name: str) -> None:
        if self._vhost(vhost).limits.pop(name, None) is not None:
            self.node.definitions_changed()

    # ---- user limits ----------------------------------------------------------------------------

    def set_user_limit(self, user: str, name: str, value: Any) -> None:
        """RabbitMQ's texts, which (unlike a vhost limit's) have no "Validation failed" heading."""
        if user not in self.node.authority.users:
            raise AdminError(["no_such_user", user])
        if name not in USER_LIMITS:
            term = f"{{{erlang_binary(name)},{erlang_term(value)}}}"
            raise AdminError(f"Unrecognised terms [{term}] in user-limits")
        if type(value) is not int:
            raise AdminError(f"{name} should be a number, actually was {erlang_term(value)}")
        self.user_limits.setdefault(user, {})[name] = value
        self.node.definitions_changed()

    def clear_user_limit(self, user: str, name: str) -> None:
        limits = self.user_limits.get(user)
        if limits is not None and limits.pop(name, None) is not None:
            if not limits:
                del self.user_limits[user]
            self.node.definitions_changed()

    def user_limit(self, user: str, name: str) -> int | None:
        """The user's limit, None when it has none (a negative value is none too)."""
        limits = self.user_limits.get(user)
        value = limits.get(name) if limits is not None else None
        return value if value is not None and value >= 0 else None

    def _vhost(self, name: str) -> Any:
        vhost = self.node.vhosts.get(name)
        if vhost is None:
            raise AdminError("vhost_not_found", missing=True)
        return vhost

    # ---- policies (broker/policies.py) ------------------------------------------------------------

    def set_policy(self, vhost: str, name: str, body: dict[str, Any], *, operator: bool = False) -> bool:
        """Add or replace a policy from RabbitMQ's JSON (True when added); it applies at once."""
        target = self._vhost(vhost)
        try:
            policy = parse_policy(vhost, name, body, operator=operator)
        except PolicyError as error:
            raise AdminError(str(error)) from None
        created = name not in target.policies.of_kind(operator)
        target.set_policy(policy, operator=operator)
        self.node.definitions_changed()
        return created

    def clear_policy(self, vhost: str, name: str, *, operator: bool = False) -> bool:
        """False when the vhost has no such policy."""
        if not self._vhost(vhost).clear_policy(name, operator=operator):
            return False
        self.node.definitions_changed()
        return True

    def _restore_policies(self, saved: dict[str, Any]) -> None:
        for key, operator in (("policies", False), ("operator_policies", True)):
            for item in saved.get(key, []):
                vhost = self.node.vhosts.get(item["vhost"])
                if vhost is not None:
                    vhost.set_policy(parse_policy(item["vhost"], item["name"], item, operator=operator),
                                     operator=operator)

    # ---- saving and restoring the overrides -----------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The overrides and every vhost's limits, for the definitions file."""
        return {
            "users": [record or {"name": name, "deleted": True} for name, record in self._users.items()],
            "vhosts": [{"name": name, "deleted": not alive} for name, alive in self._vhosts.items()],
            "permissions": [
                {"user": user, "vhost": vhost, **(record or {"deleted": True})}
                for (user, vhost), record in self._permissions.items()
            ],
            "topic_permissions": [
                {"user": user, "vhost": vhost, "exchange": exchange, **(record or {"deleted": True})}
                for (user, vhost, exchange), record in self._topics.items()
            ],
            "limits": {name: dict(v.limits) for name, v in self.node.vhosts.items() if v.limits},
            "user_limits": {name: dict(limits) for name, limits in self.user_limits.items()},
            "policies": [p.record() for v in self.node.vhosts.values() for p in v.policies.policies.values()],
            "operator_policies": [
                p.record() for v in self.node.vhosts.values() for p in v.policies.operator.values()
            ],
            "metadata": {
                name: {"description": v.description, "tags": list(v.tags)}
                for name, v in self.node.vhosts.items()
                if v.description or v.tags
            },
        }

    def restore(self, saved: dict[str, Any]) -> None:
        """Apply saved overrides at start, before the durable queues are recovered into their vhosts. What
        the configuration defines wins, as RabbitMQ applies its load_definitions file at every boot: a
        configured user deleted or changed at run time is back as configured."""
        config = self.node.config
        configured_users = {user.name for user in config.users}
        configured_permissions = {(p.user, p.vhost) for p in config.permissions}
        for item in saved.get("vhosts", []):
            if item["name"] in config.vhosts:
                continue
            if item.get("deleted"):
                self.delete_vhost(item["name"])
            else:
                self.put_vhost(item["name"])
        for item in saved.get("users", []):
            if item["name"] in configured_users:
                continue
            if item.get("deleted"):
                self.delete_user(item["name"])
            else:
                self.put_user(
                    item["name"], item["password_hash"], tuple(item["tags"]), item["hashing_algorithm"]
                )
                if item["loopback_only"] != self.node.authority.users[item["name"]].loopback_only:
                    users = self.node.authority.users
                    users[item["name"]] = replace(users[item["name"]], loopback_only=item["loopback_only"])
        configured_topics = {(t.user, t.vhost, t.exchange) for t in config.topic_permissions}
        for item in saved.get("topic_permissions", []):
            key = (item["user"], item["vhost"], item["exchange"])
            if key in configured_topics or item["user"] not in self.node.authority.users:
                continue
            if item.get("deleted"):
                kept = self.node.authority.topic_permissions
                self.node.authority.topic_permissions = tuple(
                    t for t in kept if (t.user, t.vhost, t.exchange) != key
                )
                self._topics[key] = None
            elif item["vhost"] in self.node.vhosts:
                self.set_topic_permission(*key, item["write"], item["read"])
        for item in saved.get("permissions", []):
            if (item["user"], item["vhost"]) in configured_permissions:
                continue
            if item.get("deleted"):
                self.clear_permissions(item["user"], item["vhost"])
            elif item["user"] in self.node.authority.users and item["vhost"] in self.node.vhosts:
                self.set_permissions(
                    item["user"], item["vhost"], item["configure"], item["write"], item["read"]
                )
        self._restore_policies(saved)
        for user, limits in saved.get("user_limits", {}).items():
            if user in self.node.authority.users:
                self.user_limits[user] = dict(limits)

    def restore_limits(self, saved: dict[str, Any]) -> None:
        """Vhost limits, once the recovered queues are back (a limit never refuses what was there), and the
        vhosts' metadata."""
        for name, limits in saved.get("limits", {}).items():
            vhost = self.node.vhosts.get(name)
            if vhost is not None:
                vhost.limits.update(limits)
        for name, metadata in saved.get("metadata", {}).items():
            vhost = self.node.vhosts.get(name)
            if vhost is not None:
                vhost.description, vhost.tags = metadata["description"], tuple(metadata["tags"])


def user_record(user: User) -> dict[str, Any]:
    return {
        "name": user.name,
        "password_hash": user.password_hash,
        "hashing_algorithm": user.hashing_algorithm,
        "tags": list(user.tags),
        "loopback_only": user.loopback_only,
    }


def erlang_binary(text: str) -> str:
    return '<<"' + text.replace("\\", "\\\\").replace('"', '\\"') + '">>'


def erlang_term(value: Any) -> str:
    """A JSON value as RabbitMQ's validation messages print it (strings are Erlang binaries)."""
    if isinstance(value, str):
        return erlang_binary(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, list):
        return "[" + ",".join(erlang_term(v) for v in value) + "]"
    return str(value)
