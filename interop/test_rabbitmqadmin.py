"""The real rabbitmqadmin (Debian's rabbitmq-server package: /usr/bin/rabbitmqadmin, a python3 script that
uses only the management HTTP API) driven against the broker under test: every verb it has. Skipped when
it is not installed."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import pytest

from interop.brokers import Broker
from interop.clients import pika_connection, unique
from interop.conftest import new_broker
from interop.test_management import eventually

RABBITMQADMIN = shutil.which("rabbitmqadmin") or "/usr/bin/rabbitmqadmin"
PYTHON3 = shutil.which("python3", path="/usr/bin:/bin") or "python3"

pytestmark = pytest.mark.skipif(not Path(RABBITMQADMIN).exists(), reason="rabbitmqadmin is not installed")

Admin = Callable[..., str]


@pytest.fixture(scope="module")
def managed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    instance = new_broker(tmp_path_factory.mktemp("rabbitmqadmin"), management=True, users=())
    try:
        instance.start()
        yield instance
    finally:
        instance.close()


@pytest.fixture
def admin(managed: Broker, tmp_path: Path) -> Admin:
    def run(*args: str, vhost: str = "/", check: bool = True) -> str:
        command = [
            PYTHON3, RABBITMQADMIN, "-H", managed.host, "-P", str(managed.management_port),
            "-u", "guest", "-p", "guest", "-V", vhost, *args,
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=tmp_path)
        if check:
            assert done.returncode == 0, f"{args}: {done.stdout}{done.stderr}"
        return done.stdout + done.stderr

    return run


def listed(admin: Admin, kind: str, vhost: str = "/") -> list[dict[str, Any]]:
    return json.loads(admin("-f", "raw_json", "list", kind, vhost=vhost))


def test_declare_list_and_delete_exchanges_queues_and_bindings(admin: Admin) -> None:
    exchange, queue = unique("admin-x"), unique("admin-q")
    assert "exchange declared" in admin("declare", "exchange", f"name={exchange}", "type=topic")
    assert "queue declared" in admin(
        "declare", "queue", f"name={queue}", "durable=false", 'arguments={"x-max-length": 7}'
    )
    assert "binding declared" in admin(
        "declare", "binding", f"source={exchange}", f"destination={queue}", "routing_key=a.#"
    )
    exchanges = {x["name"]: x for x in listed(admin, "exchanges")}
    assert (exchanges[exchange]["type"], exchanges[exchange]["durable"]) == ("topic", True)
    queues = {q["name"]: q for q in listed(admin, "queues")}
    assert (queues[queue]["durable"], queues[queue]["arguments"]) == (False, {"x-max-length": 7})
    bindings = [b for b in listed(admin, "bindings") if b["source"] == exchange]
    assert [(b["destination"], b["routing_key"], b["properties_key"]) for b in bindings] == [
        (queue, "a.#", "a.%23")
    ]
    table = admin("list", "queues")
    assert queue in table and "messages" in table
    assert "binding deleted" in admin(
        "delete", "binding", f"source={exchange}", "destination_type=queue", f"destination={queue}",
        "properties_key=a.%23",
    )  # fmt: skip
    assert not [b for b in listed(admin, "bindings") if b["source"] == exchange]
    assert "queue deleted" in admin("delete", "queue", f"name={queue}")
    assert "exchange deleted" in admin("delete", "exchange", f"name={exchange}")
    assert queue not in {q["name"] for q in listed(admin, "queues")}
    failed = admin("delete", "queue", f"name={queue}", check=False)
    assert f"*** Not found: /api/queues/%2F/{queue}" in failed


def test_publish_get_and_purge(admin: Admin, managed: Broker) -> None:
    queue = unique("admin-msg")
    admin("declare", "queue", f"name={queue}", "durable=false")
    assert "Message published" in admin(
        "publish", "exchange=amq.default", f"routing_key={queue}", "payload=hello"
    )
    assert "NOT routed" in admin(
        "publish", "exchange=amq.default", f"routing_key={unique('nowhere')}", "payload=x"
    )
    [message] = json.loads(admin("-f", "raw_json", "get", f"queue={queue}", "ackmode=ack_requeue_true"))
    assert (message["payload"], message["redelivered"], message["message_count"]) == ("hello", False, 0)
    assert "hello" in admin("get", f"queue={queue}")  # the table format
    [message] = json.loads(admin("-f", "raw_json", "get", f"queue={queue}", "ackmode=ack_requeue_false"))
    assert message["redelivered"] is True
    assert json.loads(admin("-f", "raw_json", "get", f"queue={queue}", "ackmode=ack_requeue_false")) == []
    with pika_connection(managed.url) as connection:
        channel = connection.channel()
        for _ in range(3):
            channel.basic_publish("", queue, b"x")
        assert "queue purged" in admin("purge", "queue", f"name={queue}")
        assert channel.queue_declare(queue, passive=True).method.message_count == 0
    admin("delete", "queue", f"name={queue}")


def test_vhosts_users_permissions_and_limits(admin: Admin, managed: Broker) -> None:
    vhost, user = unique("admin-vhost"), unique("admin-user")
    assert "vhost declared" in admin("declare", "vhost", f"name={vhost}")
    assert "user declared" in admin("declare", "user", f"name={user}", "password=pw", "tags=monitoring")
    assert "permission declared" in admin(
        "declare", "permission", f"vhost={vhost}", f"user={user}", "configure=.*", "write=.*", "read=.*"
    )
    assert "vhost_limit declared" in admin(
        "declare", "vhost_limit", f"vhost={vhost}", "name=max-queues", "value=9"
    )
    assert vhost in {v["name"] for v in listed(admin, "vhosts")}
    assert {u["name"]: u["tags"] for u in listed(admin, "users")}[user] == ["monitoring"]
    assert {"user": user, "vhost": vhost, "configure": ".*", "write": ".*", "read": ".*"} in listed(
        admin, "permissions"
    )
    assert {"vhost": vhost, "value": {"max-queues": 9}} in listed(admin, "vhost_limits")
    with pika_connection(f"amqp://{user}:pw@{managed.host}:{managed.port}/{vhost}") as connection:
        assert connection.is_open
    assert "vhost_limit deleted" in admin("delete", "vhost_limit", f"vhost={vhost}", "name=max-queues")
    assert "permission deleted" in admin("delete", "permission", f"vhost={vhost}", f"user={user}")
    assert "user deleted" in admin("delete", "user", f"name={user}")
    assert "vhost deleted" in admin("delete", "vhost", f"name={vhost}")
    assert vhost not in {v["name"] for v in listed(admin, "vhosts")}


def test_policies_and_operator_policies(admin: Admin, managed: Broker) -> None:
    name = unique("admin-policy")
    queue = f"{name}-q"
    admin("declare", "queue", f"name={queue}", "durable=false")
    assert "policy declared" in admin(
        "declare", "policy", f"name={name}", f"pattern=^{name}-", 'definition={"max-length": 3}', "priority=2"
    )
    assert "operator_policy declared" in admin(
        "declare", "operator_policy", f"name={name}", f"pattern=^{name}-", 'definition={"max-length": 1}',
        "apply-to=queues",
    )  # fmt: skip
    [policy] = [p for p in listed(admin, "policies") if p["name"] == name]
    assert (policy["pattern"], policy["definition"], policy["priority"], policy["apply-to"]) == (
        f"^{name}-", {"max-length": 3}, 2, "all"
    )  # fmt: skip
    [operator] = [p for p in listed(admin, "operator_policies") if p["name"] == name]
    assert (operator["definition"], operator["apply-to"]) == ({"max-length": 1}, "queues")
    with pika_connection(managed.url) as connection:
        channel = connection.channel()
        deadline = time.monotonic() + 15
        while True:  # RabbitMQ's queue takes the policies a moment after the API answered
            channel.basic_publish("", queue, b"m")
            if channel.queue_declare(queue, passive=True).method.message_count == 1:
                break
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert "operator_policy deleted" in admin("delete", "operator_policy", f"name={name}")
    assert "policy deleted" in admin("delete", "policy", f"name={name}")
    assert not [p for p in listed(admin, "policies") if p["name"] == name]
    admin("delete", "queue", f"name={queue}")


def test_export_and_import(admin: Admin, tmp_path: Path) -> None:
    queue = unique("admin-exported")
    admin("declare", "queue", f"name={queue}", "durable=true")
    exported = tmp_path / "definitions.json"
    assert "Exported definitions" in admin("export", str(exported))
    definitions = json.loads(exported.read_text())
    assert queue in {q["name"] for q in definitions["queues"]}
    admin("delete", "queue", f"name={queue}")
    assert "Uploaded definitions" in admin("import", str(exported))
    assert queue in {q["name"] for q in listed(admin, "queues")}
    per_vhost = tmp_path / "vhost.json"
    admin("export", str(per_vhost))
    admin("delete", "queue", f"name={queue}")


def test_lists_connections_channels_consumers_nodes_and_overview(admin: Admin, managed: Broker) -> None:
    queue = unique("admin-consumed")
    connection = pika.BlockingConnection(pika.URLParameters(managed.url))
    try:
        channel = connection.channel()
        channel.queue_declare(queue, exclusive=True)
        channel.basic_consume(queue, lambda *_: None)
        port = connection._impl._transport._sock.getsockname()[1]

        def seen() -> list[dict[str, Any]]:
            # RabbitMQ lists a connection and its consumer a moment after they open.
            found = [c for c in listed(admin, "connections") if c.get("peer_port") == port]
            assert found and [c for c in listed(admin, "consumers") if c["queue"]["name"] == queue]
            return found

        [connection_info] = eventually(seen)
        assert listed(admin, "channels")
        assert listed(admin, "nodes")[0]["name"]
        assert "rabbitmq_version" in admin("show", "overview")
        assert isinstance(listed(admin, "policies"), list) and isinstance(listed(admin, "parameters"), list)
        assert "connection closed" in admin("close", "connection", f"name={connection_info['name']}")
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker):
            connection.process_data_events(time_limit=5)
            connection.process_data_events(time_limit=5)
    finally:
        if connection.is_open:
            connection.close()
