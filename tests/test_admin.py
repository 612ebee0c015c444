"""Run-time changes to users, vhosts, permissions and limits (broker/admin.py), kept across restarts in the
definitions file, and the definitions import at start (`load_definitions`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from interop.brokers import free_port
from leveret.amqp.errors import ChannelError
from leveret.broker.admin import AdminError
from leveret.broker.definitions import export_node, import_definitions, load_definitions_file
from leveret.broker.node import Node
from leveret.broker.persistence import Persistence
from leveret.broker.store import DefinitionsError
from leveret.config import Config, Permission, User, check_password, hash_password

CONFIG_USERS = (User("guest", hash_password("guest"), ("administrator",), loopback_only=True),)


def open_node(data_dir: Path, **settings: object) -> Node:
    """A node over `data_dir` with its definitions recovered, as a start does (without the server)."""
    config = Config(
        data_dir=str(data_dir), users=CONFIG_USERS, permissions=(Permission("guest", "/"),), **settings
    )
    node = Node(config)
    persistence = Persistence(data_dir)
    node.attach_persistence(persistence)
    persistence.recover(node)
    return node


def restart(node: Node, data_dir: Path, **settings: object) -> Node:
    assert node.persistence is not None
    node.persistence.close()
    return open_node(data_dir, **settings)


def test_users_vhosts_permissions_and_limits_survive_a_restart(tmp_path: Path) -> None:
    node = open_node(tmp_path)
    admin = node.admin
    assert admin.put_vhost("apps", acting_user="guest")
    assert not admin.put_vhost("apps")
    assert admin.put_user("alice", hash_password("secret"), ("management",))
    assert admin.set_permissions("alice", "apps", "^a", ".*", ".*")
    admin.set_vhost_limit("apps", "max-queues", 1)
    node.vhosts["apps"].declare_queue(
        "a.work", owner=None, durable=True, exclusive=False, auto_delete=False, arguments={}
    )
    node = restart(node, tmp_path)
    assert "apps" in node.vhosts and "a.work" in node.vhosts["apps"].queues
    alice = node.authority.users["alice"]
    assert alice.tags == ("management",) and check_password(alice.password_hash, "secret")
    assert node.authority.permissions[("alice", "apps")].configure.pattern == "^a"
    assert node.authority.permissions[("guest", "apps")].read.pattern == ".*"  # the creator's
    assert node.vhosts["apps"].limits == {"max-queues": 1}
    with pytest.raises(ChannelError, match=r"queue limit in vhost 'apps' \(1\) is reached"):
        node.vhosts["apps"].declare_queue(
            "a.more", owner=None, durable=False, exclusive=False, auto_delete=False, arguments={}
        )
    # Deletions are kept too: the vhost's queue goes with it.
    assert node.admin.delete_vhost("apps") and node.admin.delete_user("alice")
    node = restart(node, tmp_path)
    assert "apps" not in node.vhosts and "alice" not in node.authority.users
    assert ("alice", "apps") not in node.authority.permissions


def test_the_configuration_wins_at_start_for_what_it_names(tmp_path: Path) -> None:
    node = open_node(tmp_path)
    node.admin.put_user("guest", hash_password("changed"), ("management",))
    node.admin.delete_vhost("/")
    node = restart(node, tmp_path)
    assert check_password(node.authority.users["guest"].password_hash, "guest")
    assert "/" in node.vhosts and ("guest", "/") in node.authority.permissions


def test_refused_changes() -> None:
    node = Node(Config())
    with pytest.raises(AdminError) as missing:
        node.admin.set_permissions("nobody", "/", ".*", ".*", ".*")
    assert missing.value.reason == "vhost_or_user_not_found"
    with pytest.raises(AdminError) as bad:
        node.admin.set_permissions("guest", "/", "(", ".*", ".*")
    assert bad.value.reason[:2] == ["invalid_regexp", "("]
    with pytest.raises(AdminError) as unknown:
        node.admin.set_vhost_limit("nowhere", "max-queues", 1)
    assert (unknown.value.reason, unknown.value.missing) == ("vhost_not_found", True)
    with pytest.raises(AdminError):
        node.admin.put_user("x", "not-a-hash", ())
    with pytest.raises(AdminError):
        node.admin.put_user("x", hash_password("p"), (), "rabbit_password_hashing_sha1")


def test_sha512_and_md5_hashes_from_rabbitmq_log_in() -> None:
    import base64
    import hashlib

    node = Node(Config())
    for algorithm, digest in (
        ("rabbit_password_hashing_sha512", hashlib.sha512),
        ("rabbit_password_hashing_md5", hashlib.md5),
    ):
        salt = b"\x01\x02\x03\x04"
        password_hash = base64.b64encode(salt + digest(salt + b"pw").digest()).decode()
        node.admin.put_user(algorithm, password_hash, (), algorithm)
        assert node.authority.authenticate(algorithm, "pw", from_loopback=True)
        assert not node.authority.authenticate(algorithm, "other", from_loopback=True)


def test_load_definitions_imports_at_start(tmp_path: Path) -> None:
    definitions = {
        "users": [{"name": "bob", "password_hash": hash_password("pw"), "tags": "monitoring"}],
        "vhosts": [{"name": "loaded"}],
        "permissions": [{"user": "bob", "vhost": "loaded", "configure": ".*", "write": ".*", "read": ".*"}],
        "parameters": [
            {
                "vhost": "loaded",
                "component": "vhost-limits",
                "name": "limits",
                "value": {"max-connections": 3},
            }
        ],
        "exchanges": [
            {
                "name": "x",
                "vhost": "loaded",
                "type": "fanout",
                "durable": True,
                "auto_delete": False,
                "internal": False,
                "arguments": {},
            }
        ],
        "queues": [
            {
                "name": "q",
                "vhost": "loaded",
                "durable": True,
                "auto_delete": False,
                "arguments": {"x-max-length": 5},
            }
        ],
        "bindings": [
            {
                "source": "x",
                "vhost": "loaded",
                "destination": "q",
                "destination_type": "queue",
                "routing_key": "",
                "arguments": {},
            }
        ],
    }
    path = tmp_path / "definitions.json"
    path.write_text(json.dumps(definitions))
    node = open_node(tmp_path / "data")
    load_definitions_file(node, str(path))
    vhost = node.vhosts["loaded"]
    assert vhost.queues["q"].arguments == {"x-max-length": 5} and vhost.limits == {"max-connections": 3}
    assert [b.destination.name for b in vhost.exchanges["x"].bindings] == ["q"]
    assert node.authority.users["bob"].tags == ("monitoring",)
    exported = export_node(node, "3.13.0")
    assert {"name": "loaded"} in exported["vhosts"]
    assert {"user": "bob", "vhost": "loaded", "configure": ".*", "write": ".*", "read": ".*"} in exported[
        "permissions"
    ]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{", "cannot be used"),
        (
            '{"queues": [{"name": "q", "vhost": "nowhere"}]}',
            "cannot be imported: ['no_such_vhost', 'nowhere']",
        ),
        (
            '{"queues": [{"name": "q", "vhost": "/", "arguments": {"x-max-length": -1}}]}',
            "invalid arg 'x-max-length'",
        ),
    ],
)
def test_a_bad_load_definitions_file_stops_the_start(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "definitions.json"
    path.write_text(content)
    with pytest.raises(DefinitionsError, match=message.replace("[", r"\[").replace("(", r"\(")) as refused:
        load_definitions_file(Node(Config()), str(path))
    assert str(path) in str(refused.value)
    with pytest.raises(DefinitionsError, match="cannot be used"):
        load_definitions_file(Node(Config()), str(tmp_path / "missing.json"))


def test_a_per_vhost_import_ignores_the_vhost_named_in_items() -> None:
    node = Node(Config())
    node.admin.put_vhost("other")
    import_definitions(node, {"queues": [{"name": "q", "vhost": "/", "durable": False}]}, only_vhost="other")
    assert "q" in node.vhosts["other"].queues and "q" not in node.vhosts["/"].queues


def test_the_broker_refuses_to_start_on_a_bad_load_definitions_file(tmp_path: Path) -> None:
    import subprocess
    import sys

    missing = tmp_path / "missing.json"
    config = tmp_path / "leveret.yaml"
    port = free_port()
    config.write_text(
        f"load_definitions: {missing}\ndata_dir: {tmp_path / 'data'}\nlisteners: {{amqp: {{port: {port}}}}}\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "leveret", "--config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert f"load_definitions file {missing} cannot be used" in done.stderr
    # Refused before the store was opened: nothing was written.
    assert not (tmp_path / "data" / "messages").exists()


def test_vhost_metadata_is_kept(tmp_path: Path) -> None:
    node = open_node(tmp_path)
    node.admin.put_vhost("described", description="the d", tags=("a", "b"))
    node.admin.put_vhost("/", description="the default")
    node = restart(node, tmp_path)
    assert (node.vhosts["described"].description, node.vhosts["described"].tags) == ("the d", ("a", "b"))
    assert node.vhosts["/"].description == "the default"


def test_topic_permissions_survive_a_restart_and_travel_in_definitions(tmp_path: Path) -> None:
    node = open_node(tmp_path)
    node.admin.put_user("carol", hash_password("pw"), ())
    assert node.admin.set_topic_permission("carol", "/", "amq.topic", "^carol\\.", ".*")
    assert not node.admin.set_topic_permission("carol", "/", "amq.topic", "^{username}\\.", ".*")
    with pytest.raises(AdminError):
        node.admin.set_topic_permission("carol", "/", "amq.topic", "(", ".*")
    node = restart(node, tmp_path)
    [topic] = node.authority.topic_permissions
    assert (topic.user, topic.exchange, topic.write) == ("carol", "amq.topic", "^{username}\\.")
    exported = export_node(node, "3.13.0")["topic_permissions"]
    assert exported == [
        {"user": "carol", "vhost": "/", "exchange": "amq.topic", "write": "^{username}\\.", "read": ".*"}
    ]
    assert node.admin.clear_topic_permissions("carol", "/")
    import_definitions(node, {"topic_permissions": exported})
    assert len(node.authority.topic_permissions) == 1
    node.admin.delete_user("carol")
    assert node.authority.topic_permissions == ()


def test_user_limits_and_policies_survive_a_restart_and_travel_in_definitions(tmp_path: Path) -> None:
    node = open_node(tmp_path)
    node.admin.put_user("limited", hash_password("pw"), ())
    node.admin.set_user_limit("limited", "max-channels", 3)
    node.admin.set_policy("/", "cap", {"pattern": "^q", "definition": {"max-length": 2}, "priority": 1})
    node.admin.set_policy("/", "op", {"pattern": "^q", "definition": {"max-length": 1}}, operator=True)
    node.vhosts["/"].declare_queue(
        "q1", owner=None, durable=True, exclusive=False, auto_delete=False, arguments={}
    )
    node = restart(node, tmp_path)
    assert node.admin.user_limit("limited", "max-channels") == 3
    queue = node.vhosts["/"].queues["q1"]
    assert (queue.policy.name, queue.operator_policy.name) == ("cap", "op")
    assert queue.effective_arguments == {"x-max-length": 1}
    exported = export_node(node, "3.10.8")
    assert [u["limits"] for u in exported["users"] if u["name"] == "limited"] == [{"max-channels": 3}]
    assert [p["name"] for p in exported["policies"]] == ["cap"]
    other = Node(Config())
    import_definitions(other, exported)
    assert other.admin.user_limit("limited", "max-channels") == 3
    assert other.vhosts["/"].policies.policies["cap"].priority == 1
    other.admin.delete_user("limited")
    assert other.admin.user_limit("limited", "max-channels") is None
    with pytest.raises(AdminError):
        other.admin.set_user_limit("nobody", "max-channels", 1)
