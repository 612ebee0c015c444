"""leveret.config: defaults, overrides, error reporting, hostile YAML and RabbitMQ password hashes."""

import base64
import dataclasses
import hashlib
import re
from importlib.resources import files
from pathlib import Path
from typing import get_args, get_type_hints

import pytest

from leveret.config import (
    Config,
    ConfigError,
    Listener,
    ManagementListener,
    check_password,
    hash_password,
    load_config,
    parse_size,
)

# From RabbitMQ's passwords guide ("Computing a password hash"): salt 908DC60A, password "test12".
RABBITMQ_DOC_HASH = "kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR"


def write(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "leveret.yaml"
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8")
    else:
        path.write_bytes(text)
    return path


def errors_of(path: Path, **kwargs: object) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path, **kwargs)
    return caught.value.errors


# Defaults and the embedded file


def test_embedded_default_equals_dataclass_defaults() -> None:
    assert load_config() == Config()


def test_default_values() -> None:
    config = Config()
    assert config.listeners.amqp == Listener(("127.0.0.1", "::1"), 5672)
    assert config.listeners.amqp.hosts == ("127.0.0.1", "::1")
    assert config.listeners.management is None
    assert config.vhosts == ("/",)
    (guest,) = config.users
    assert (guest.name, guest.tags, guest.loopback_only) == ("guest", ("administrator",), True)
    assert check_password(guest.password_hash, "guest")
    assert [(p.user, p.vhost, p.configure, p.write, p.read) for p in config.permissions] == [
        ("guest", "/", ".*", ".*", ".*")
    ]
    assert config.limits.frame_max == 131072
    assert config.resources.disk_free_limit == "50MB"


def _field_names(cls: type) -> set[str]:
    names = set()
    for name, hint in get_type_hints(cls).items():
        names.add(name)
        for nested in (hint, *get_args(hint)):
            if dataclasses.is_dataclass(nested):
                names |= _field_names(nested)
    return names


def test_default_yaml_names_every_field() -> None:
    text = files("leveret.config").joinpath("default.yaml").read_text(encoding="utf-8")
    # Keys of sections that are off by default (tls) are shown in a commented-out example.
    missing = [name for name in _field_names(Config) if not re.search(rf"^[ #-]*{name}:", text, re.M)]
    assert missing == []


def test_empty_file_means_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "# nothing but a comment\n")) == Config()


# Values and overrides


def test_file_values(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
listeners:
  amqp: {host: 0.0.0.0, port: 5673}
  management: {host: 127.0.0.1}
vhosts: [/, staging]
users:
  - {name: alice, password: s3cret, tags: [monitoring]}
  - {name: bob, password_hash: kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR}
permissions:
  - {user: alice, vhost: staging, read: "^logs\\\\."}
limits: {handshake_timeout: 5, consumer_timeout: null}
resources: {memory_high_watermark: 2GB, disk_free_limit: 1073741824}
""",
    )
    config = load_config(path)
    assert config.listeners.amqp == Listener("0.0.0.0", 5673)
    assert config.listeners.management == ManagementListener("127.0.0.1", 15672)
    alice, bob = config.users
    assert check_password(alice.password_hash, "s3cret") and not alice.loopback_only
    assert alice.tags == ("monitoring",)
    assert bob.password_hash == RABBITMQ_DOC_HASH and check_password(bob.password_hash, "test12")
    assert config.permissions[0].read == r"^logs\."
    assert config.permissions[0].write == ".*"
    # An int is accepted where a float is expected, and comes back as a float.
    assert config.limits.handshake_timeout == 5.0 and isinstance(config.limits.handshake_timeout, float)
    assert config.limits.consumer_timeout is None
    assert config.resources == dataclasses.replace(
        Config().resources, memory_high_watermark="2GB", disk_free_limit=1073741824
    )


def test_overrides_apply_to_the_default() -> None:
    config = load_config(
        overrides={"listeners.amqp.host": "0.0.0.0", "listeners.amqp.port": 5673, "data_dir": "/tmp/x"}
    )
    assert config.listeners.amqp == Listener("0.0.0.0", 5673)
    assert config.data_dir == "/tmp/x"
    assert dataclasses.replace(config, listeners=Config().listeners, data_dir=Config().data_dir) == Config()


def test_a_listener_takes_one_host_or_a_list(tmp_path: Path) -> None:
    path = write(tmp_path, 'listeners:\n  amqp: {host: ["::", 0.0.0.0]}\n  management: {host: "::1"}\n')
    config = load_config(path)
    assert config.listeners.amqp.hosts == ("::", "0.0.0.0")
    assert config.listeners.management is not None and config.listeners.management.hosts == ("::1",)
    # --host overrides with one host.
    assert load_config(path, overrides={"listeners.amqp.host": "::1"}).listeners.amqp.hosts == ("::1",)


def test_override_reaches_only_its_key_through_a_shared_alias(tmp_path: Path) -> None:
    path = write(tmp_path, "listeners:\n  amqp: &l {host: 127.0.0.2, port: 6000}\n  management: *l\n")
    config = load_config(path, overrides={"listeners.amqp.port": 6001})
    assert config.listeners.amqp.port == 6001
    assert config.listeners.management == ManagementListener("127.0.0.2", 6000)


def test_override_errors_are_reported_with_path() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(overrides={"listeners.amqp.port": "abc", "data_dir.sub": 1, "nope": 2})
    assert set(caught.value.errors) == {
        "listeners.amqp.port: expected an integer in 1..65535, got 'abc'",
        "data_dir: cannot apply override 'data_dir.sub' to a non-mapping",
        "nope: unknown key",
    }


# Error reporting


def test_every_error_is_reported_at_once(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
listeners:
  amqp: {port: abc}
users:
  - {name: alice, password: x}
  - {password: y}
permissions:
  - {user: mallory, vhost: /, read: "("}
limits:
  heartbeat: true
  hearbeat: 30
""",
    )
    assert set(errors_of(path)) == {
        "listeners.amqp.port: expected an integer in 1..65535, got 'abc'",
        "users[1].name: missing",
        "permissions[0].read: expected a valid regular expression, got '('",
        "limits.heartbeat: expected an integer in 0..65535, got true",
        "limits.hearbeat: unknown key (did you mean 'heartbeat'?)",
    }


def test_cross_references_are_checked(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
vhosts: [/, a, a]
users:
  - {name: guest, password: guest}
  - {name: guest, password: other}
permissions:
  - {user: ghost, vhost: /}
  - {user: guest, vhost: nowhere}
  - {user: guest, vhost: /}
  - {user: guest, vhost: /}
topic_permissions:
  - {user: ghost, vhost: /, exchange: amq.topic}
  - {user: guest, vhost: nowhere, exchange: amq.topic}
  - {user: guest, vhost: /, exchange: amq.topic, write: '^{username}\\.'}
  - {user: guest, vhost: /, exchange: amq.topic}
""",
    )
    assert set(errors_of(path)) == {
        "topic_permissions[0].user: no such user 'ghost'",
        "topic_permissions[1].vhost: no such vhost 'nowhere'",
        "topic_permissions[3]: duplicate entry for user 'guest' on vhost '/' and exchange 'amq.topic'",
        "vhosts[2]: duplicate vhost 'a'",
        "users[1].name: duplicate user 'guest'",
        "permissions[0].user: no such user 'ghost'",
        "permissions[1].vhost: no such vhost 'nowhere'",
        "permissions[3]: duplicate entry for user 'guest' on vhost '/'",
    }


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("data_dir: 5", "data_dir: expected a non-empty string, got 5"),
        ("vhosts: /", "vhosts: expected a list, got '/'"),
        ("vhosts: []\npermissions: []", "vhosts: expected at least one vhost"),
        ("limits: {frame_max: 1024}", "limits.frame_max: expected an integer in 4096..4294967295, got 1024"),
        ("limits: {handshake_timeout: .inf}", "limits.handshake_timeout: expected a number > 0, got inf"),
        (
            "limits: {max_connections: 1.5}",
            "limits.max_connections: expected an integer >= 1 or null, got 1.5",
        ),
        (
            "limits: {max_message_size: 536870913}",
            "limits.max_message_size: expected an integer in 1..536870912, got 536870913",
        ),
        (
            "resources: {memory_high_watermark: 1.5}",
            "resources.memory_high_watermark: expected a fraction in (0, 1] or a size such as '2GB', got 1.5",
        ),
        (
            "resources: {disk_free_limit: lots}",
            "resources.disk_free_limit: expected a size in bytes such as 1048576, '50MB' or '1GiB',"
            " got 'lots'",
        ),
        (
            "permissions: [{user: guest, vhost: /, write: 'a{9999999999}'}]",
            "permissions[0].write: expected a valid regular expression, got 'a{9999999999}'",
        ),
        ("log_level: loud", "log_level: expected one of debug, info, warning, error, got 'loud'"),
        (
            "auth_mechanisms: [PLAIN, CRAM-MD5]",
            "auth_mechanisms: expected a non-empty list of distinct SASL mechanisms among PLAIN, AMQPLAIN,"
            " EXTERNAL, got a list",
        ),
        (
            "ssl_cert_login_from: serial",
            "ssl_cert_login_from: expected one of distinguished_name, common_name, got 'serial'",
        ),
        (
            "listeners: {amqp: {host: []}}",
            "listeners.amqp.host: expected a host such as '127.0.0.1', '::1', '::' or '0.0.0.0',"
            " or a non-empty list of them, got a list",
        ),
        ("listeners: {amqp: {host: [127.0.0.1, 5]}}", "listeners.amqp.host[1]: expected a string, got 5"),
        (
            "listeners: {amqp: {host: 5}}",
            "listeners.amqp.host: expected a host such as '127.0.0.1', '::1', '::' or '0.0.0.0',"
            " or a non-empty list of them, got 5",
        ),
        ("listeners: {management: 80}", "listeners.management: expected a mapping or null, got 80"),
        ("users: [{name: a}]", "users[0].password_hash: missing (give password_hash or password)"),
        (
            "users: [{name: a, password: b, password_hash: c}]",
            "users[0]: give password_hash or password, not both",
        ),
        (
            "users: [{name: a, password_hash: c2VjcmV0}]",
            "users[0].password_hash: expected a RabbitMQ password hash"
            " (base64 of a 4-byte salt and the digest), got 'c2VjcmV0'",
        ),
        ("users: [{name: a, password: 7}]", "users[0].password: expected a string, got 7"),
        ("- a\n- b\n", "(top level): expected a mapping, got a list"),
        ("just a string", "(top level): expected a mapping, got 'just a string'"),
    ],
)
def test_single_errors(tmp_path: Path, text: str, error: str) -> None:
    assert errors_of(write(tmp_path, text)) == [error]


def test_config_error_message_lists_everything(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, "data_dir: 1\nlog_level: 2\n"))
    assert isinstance(caught.value, Exception)
    assert str(tmp_path) in str(caught.value)
    assert all(error in str(caught.value) for error in caught.value.errors)
    assert len(caught.value.errors) == 2


# Hostile and broken files


def test_python_tags_are_refused_with_position(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = write(tmp_path, f'log_level: info\ndata_dir: !!python/object/apply:os.system ["touch {marker}"]\n')
    (error,) = errors_of(path)
    assert error.startswith("line 2, column 11: ") and "python/object/apply:os.system" in error
    assert not marker.exists()


def test_billion_laughs_is_refused(tmp_path: Path) -> None:
    # 63 aliases, under the alias cap, that would expand to 9**7 strings.
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 8)]
    (error,) = errors_of(write(tmp_path, "\n".join(lines)))
    assert "expands to more than" in error


def test_alias_count_is_capped(tmp_path: Path) -> None:
    (error,) = errors_of(write(tmp_path, "vhosts: [&v /, " + ", ".join(["*v"] * 65) + "]\n"))
    assert error.endswith("more than 64 aliases")


def test_merge_key_bomb_is_refused(tmp_path: Path) -> None:
    keys = ", ".join(f"k{i}: {i}" for i in range(2000))
    lines = [f"m0: &m0 {{{keys}}}"] + [f"m{i}: &m{i} {{<<: [*m{i - 1}, *m{i - 1}]}}" for i in range(1, 30)]
    (error,) = errors_of(write(tmp_path, "\n".join(lines)))
    assert "expands to more than" in error


def test_recursive_alias_is_refused(tmp_path: Path) -> None:
    (error,) = errors_of(write(tmp_path, "limits: &x {<<: *x}\n"))
    assert "recursive alias" in error


def test_deep_nesting_is_refused(tmp_path: Path) -> None:
    (error,) = errors_of(write(tmp_path, "vhosts: " + "[" * 5000 + "]" * 5000))
    assert "nested more than" in error


def test_duplicate_keys_are_refused(tmp_path: Path) -> None:
    assert errors_of(write(tmp_path, "data_dir: a\nlog_level: info\ndata_dir: b\n")) == [
        "line 3, column 1: duplicate key 'data_dir'"
    ]


def test_a_few_aliases_are_fine(tmp_path: Path) -> None:
    path = write(tmp_path, "vhosts: [&v /, x]\npermissions: [{user: guest, vhost: *v}]\n")
    assert load_config(path).permissions == Config().permissions


def test_oversized_file_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "# padding\n" * (2 * 1024 * 1024 // 10))
    assert errors_of(path) == ["file is larger than 1048576 bytes"]


def test_invalid_utf8_is_refused(tmp_path: Path) -> None:
    assert errors_of(write(tmp_path, b"data_dir: caf\xe9\n")) == ["not valid UTF-8 (byte 13)"]


def test_syntax_error_has_position(tmp_path: Path) -> None:
    (error,) = errors_of(write(tmp_path, "listeners:\n  amqp: [unclosed\n"))
    assert re.match(r"line \d+, column \d+: ", error)


@pytest.mark.parametrize("name", ["missing.yaml", "."])
def test_unreadable_file(tmp_path: Path, name: str) -> None:
    (error,) = errors_of(tmp_path / name)
    assert error.startswith("cannot read: ")


# Passwords and sizes


def test_rabbitmq_documented_hash() -> None:
    salt = bytes.fromhex("908DC60A")
    by_hand = base64.b64encode(salt + hashlib.sha256(salt + b"test12").digest()).decode()
    assert by_hand == RABBITMQ_DOC_HASH
    assert check_password(RABBITMQ_DOC_HASH, "test12")
    assert not check_password(RABBITMQ_DOC_HASH, "test13")


def test_hash_password_round_trips() -> None:
    first, second = hash_password("pässword"), hash_password("pässword")
    assert first != second  # fresh salt each time
    raw = base64.b64decode(first)
    assert len(raw) == 36
    assert raw[4:] == hashlib.sha256(raw[:4] + "pässword".encode()).digest()
    assert check_password(first, "pässword") and check_password(second, "pässword")
    assert not check_password(first, "password")


@pytest.mark.parametrize("bad", ["", "not base64!", "c2VjcmV0", RABBITMQ_DOC_HASH[:-4]])
def test_malformed_hash_matches_nothing(bad: str) -> None:
    assert not check_password(bad, "")


@pytest.mark.parametrize(
    ("text", "size"),
    [(1048576, 1048576), ("50MB", 50_000_000), ("1GiB", 2**30), ("512M", 512 * 2**20), ("10 kB", 10_000)],
)
def test_parse_size(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["", "MB", "1.5GB", "-1", "5 parsecs", -1, True, 1.0])
def test_parse_size_rejects(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_size(bad)  # type: ignore[arg-type]
