"""The broker configuration as frozen dataclasses.

The loader validates YAML by walking these fields and their type hints, so adding a field here is all a
new setting needs. Rules beyond the type go in `metadata={"check": Check}`; a field that may be given
under another key (a plain `password` instead of `password_hash`) says so with `metadata={"alias": ...}`.
"""

from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field

from . import checks
from .cluster import Cluster
from .passwords import ALGORITHMS, SHA256, hash_password

# hash_password("guest") with a fixed salt: a random one would make every load differ from the default.
GUEST_PASSWORD_HASH = "Ubw9+6x+gNIJQIRpSjP9+0OUGZmbxBfiO1xhIC/iYBIbCw5s"


def _port(default: int) -> int:
    return field(default=default, metadata={"check": checks.int_range(1, 65535)})


# Loopback on both families, as RabbitMQ's default listener accepts both (Leveret's default stays local).
LOOPBACK_HOSTS = ("127.0.0.1", "::1")


@dataclass(frozen=True, slots=True)
class Listener:
    # One address or several, all on `port` (RabbitMQ's listeners.tcp.N). "::" is every address of both
    # families (as RabbitMQ's dual-stack default), "0.0.0.0" every IPv4 one.
    host: str | tuple[str, ...] = field(default=LOOPBACK_HOSTS, metadata={"check": checks.hosts()})
    port: int = _port(5672)

    @property
    def hosts(self) -> tuple[str, ...]:
        return (self.host,) if isinstance(self.host, str) else self.host


@dataclass(frozen=True, slots=True)
class ManagementListener(Listener):
    port: int = _port(15672)
    # RabbitMQ's prometheus.return_per_object_metrics: /metrics per queue (labels vhost and queue) rather
    # than aggregated over the node; /metrics/per-object is per queue either way.
    return_per_object_metrics: bool = False


@dataclass(frozen=True, slots=True)
class AmqpsListener(Listener):
    port: int = _port(5671)


@dataclass(frozen=True, slots=True)
class Listeners:
    amqp: Listener = Listener()
    # AMQP over TLS (RabbitMQ's listeners.ssl); None: none. Needs the `tls` section.
    amqps: AmqpsListener | None = None
    # None: no management listener.
    management: ManagementListener | None = None


@dataclass(frozen=True, slots=True)
class Tls:
    """The amqps listener's certificates and client checks: RabbitMQ's ssl_options."""

    certfile: str = field(metadata={"check": checks.non_empty()})  # the server's chain, PEM
    keyfile: str = field(metadata={"check": checks.non_empty()})  # its private key, PEM
    # CA certificates that client certificates are verified against, PEM.
    cacertfile: str | None = None
    # verify_peer: a client certificate, when sent, must verify against cacertfile.
    verify: str = field(
        default="verify_none", metadata={"check": checks.one_of("verify_none", "verify_peer")}
    )
    # With verify_peer: a client that sends no certificate is refused.
    fail_if_no_peer_cert: bool = False


@dataclass(frozen=True, slots=True)
class User:
    name: str = field(metadata={"check": checks.non_empty()})
    password_hash: str = field(
        metadata={"check": checks.password_hash(), "alias": ("password", hash_password)}
    )
    tags: tuple[str, ...] = ()
    # Like RabbitMQ's loopback_users: this user may only connect from localhost.
    loopback_only: bool = False
    # The digest of password_hash; users made over the management API or imported may have another.
    hashing_algorithm: str = field(default=SHA256, metadata={"check": checks.one_of(*ALGORITHMS)})


@dataclass(frozen=True, slots=True)
class Permission:
    user: str
    vhost: str
    configure: str = field(default=".*", metadata={"check": checks.regex()})
    write: str = field(default=".*", metadata={"check": checks.regex()})
    read: str = field(default=".*", metadata={"check": checks.regex()})


@dataclass(frozen=True, slots=True)
class TopicPermission:
    """RabbitMQ's topic permissions: which routing keys a user may publish with (write) and bind with (read)
    on one topic exchange. `{username}` and `{vhost}` in a pattern stand for the connection's."""

    user: str
    vhost: str
    exchange: str
    write: str = field(default=".*", metadata={"check": checks.regex()})
    read: str = field(default=".*", metadata={"check": checks.regex()})


@dataclass(frozen=True, slots=True)
class Limits:
    # 0 means no limit below the protocol's 65535.
    channel_max: int = field(default=2047, metadata={"check": checks.int_range(0, 65535)})
    # AMQP's frame-min-size is 4096; the wire field is 32 bits.
    frame_max: int = field(default=131072, metadata={"check": checks.int_range(4096, 2**32 - 1)})
    # Seconds; 0 disables heartbeats. The wire field is 16 bits.
    heartbeat: int = field(default=60, metadata={"check": checks.int_range(0, 65535)})
    # RabbitMQ 3.13's default (128 MiB; 4.x lowered it to 16 MiB); its ceiling is 512 MiB.
    max_message_size: int = field(default=134217728, metadata={"check": checks.int_range(1, 536870912)})
    # Seconds from TCP accept to connection.open-ok.
    handshake_timeout: float = field(default=10.0, metadata={"check": checks.positive_number()})
    # Milliseconds a delivery may stay unacknowledged; None or 0 disables.
    consumer_timeout: int | None = field(default=1800000, metadata={"check": checks.int_range(0)})
    # None: unlimited.
    max_connections: int | None = field(default=None, metadata={"check": checks.int_range(1)})


@dataclass(frozen=True, slots=True)
class Resources:
    # A fraction of total memory, or an absolute size such as "2GB".
    memory_high_watermark: float | str = field(default=0.6, metadata={"check": checks.fraction_or_size()})
    disk_free_limit: str | int = field(default="50MB", metadata={"check": checks.size()})
    # Memory for ready messages (bodies and ~256 bytes each): a fraction of the memory high watermark, or a
    # size. Past it, the largest backlogs are paged out to disk (RabbitMQ's paging ratio is 0.5 too).
    message_memory_budget: float | str = field(default=0.5, metadata={"check": checks.fraction_or_size()})


def _tls_problems(values: Mapping[str, object]) -> list[tuple[str, str]]:
    problems = []
    listeners, tls = values.get("listeners"), values.get("tls")
    if isinstance(listeners, Listeners) and listeners.amqps is not None and "tls" in values and tls is None:
        problems.append(("listeners.amqps", "needs a `tls` section with certfile and keyfile"))
    if isinstance(tls, Tls) and tls.verify == "verify_peer" and not tls.cacertfile:
        problems.append(("tls.cacertfile", "verify_peer needs the CA certificates to verify clients against"))
    if isinstance(tls, Tls) and tls.fail_if_no_peer_cert and tls.verify != "verify_peer":
        problems.append(("tls.fail_if_no_peer_cert", "applies only with verify: verify_peer"))
    return problems


def _duplicates(entries: list[tuple[str, Hashable, str]]) -> list[tuple[str, str]]:
    """(path, message) for each (path, key, label) entry whose key appeared in an earlier entry."""
    seen: set[Hashable] = set()
    found = []
    for path, key, label in entries:
        if key in seen:
            found.append((path, f"duplicate {label}"))
        seen.add(key)
    return found


@dataclass(frozen=True, slots=True)
class Config:
    listeners: Listeners = Listeners()
    tls: Tls | None = None
    # SASL mechanisms offered in connection.start (RabbitMQ's auth_mechanisms). EXTERNAL (RabbitMQ's
    # rabbitmq_auth_mechanism_ssl) logs in with the TLS client certificate, on amqps connections only.
    auth_mechanisms: tuple[str, ...] = field(
        default=("PLAIN", "AMQPLAIN"), metadata={"check": checks.mechanisms()}
    )
    # Where EXTERNAL takes the username from (RabbitMQ's ssl_cert_login_from; its default).
    ssl_cert_login_from: str = field(
        default="distinguished_name", metadata={"check": checks.one_of("distinguished_name", "common_name")}
    )
    data_dir: str = field(default="./leveret-data", metadata={"check": checks.non_empty()})
    vhosts: tuple[str, ...] = ("/",)
    users: tuple[User, ...] = (User("guest", GUEST_PASSWORD_HASH, ("administrator",), loopback_only=True),)
    permissions: tuple[Permission, ...] = (Permission("guest", "/"),)
    topic_permissions: tuple[TopicPermission, ...] = ()
    limits: Limits = Limits()
    resources: Resources = Resources()
    # RabbitMQ's load_definitions: a definitions file (its JSON export format) imported at every start.
    load_definitions: str | None = None
    log_level: str = field(
        default="info", metadata={"check": checks.one_of("debug", "info", "warning", "error")}
    )
    # text: one line a record; json: one JSON object a line, for log shippers.
    log_format: str = field(default="text", metadata={"check": checks.one_of("text", "json")})
    # None: a single node, no etcd. See config/cluster.py.
    cluster: Cluster | None = None

    @staticmethod
    def cross_check(values: Mapping[str, object]) -> list[tuple[str, str]]:
        """Rules spanning fields, as (path, message); `values` holds each field that validated on its own.

        A field missing from `values` had errors already reported, so rules that need it are skipped
        rather than piling up follow-on errors.
        """
        problems: list[tuple[str, str]] = _tls_problems(values)
        vhosts = values.get("vhosts")
        users = values.get("users")
        permissions = values.get("permissions")
        if isinstance(vhosts, tuple):
            if not vhosts:
                problems.append(("vhosts", "expected at least one vhost"))
            problems += [
                (f"vhosts[{i}]", "expected a non-empty string") for i, v in enumerate(vhosts) if not v
            ]
            problems += _duplicates([(f"vhosts[{i}]", v, f"vhost {v!r}") for i, v in enumerate(vhosts)])
        if isinstance(users, tuple):
            problems += _duplicates(
                [(f"users[{i}].name", u.name, f"user {u.name!r}") for i, u in enumerate(users)]
            )
        if isinstance(permissions, tuple):
            problems += _duplicates(
                [
                    (
                        f"permissions[{i}]",
                        (p.user, p.vhost),
                        f"entry for user {p.user!r} on vhost {p.vhost!r}",
                    )
                    for i, p in enumerate(permissions)
                ]
            )
            user_names = {user.name for user in users} if isinstance(users, tuple) else None
            for i, permission in enumerate(permissions):
                if user_names is not None and permission.user not in user_names:
                    problems.append((f"permissions[{i}].user", f"no such user {permission.user!r}"))
                if isinstance(vhosts, tuple) and permission.vhost not in vhosts:
                    problems.append((f"permissions[{i}].vhost", f"no such vhost {permission.vhost!r}"))
        topic_permissions = values.get("topic_permissions")
        if isinstance(topic_permissions, tuple):
            problems += _duplicates(
                [
                    (
                        f"topic_permissions[{i}]",
                        (p.user, p.vhost, p.exchange),
                        f"entry for user {p.user!r} on vhost {p.vhost!r} and exchange {p.exchange!r}",
                    )
                    for i, p in enumerate(topic_permissions)
                ]
            )
            user_names = {user.name for user in users} if isinstance(users, tuple) else None
            for i, topic in enumerate(topic_permissions):
                if user_names is not None and topic.user not in user_names:
                    problems.append((f"topic_permissions[{i}].user", f"no such user {topic.user!r}"))
                if isinstance(vhosts, tuple) and topic.vhost not in vhosts:
                    problems.append((f"topic_permissions[{i}].vhost", f"no such vhost {topic.vhost!r}"))
        return problems
