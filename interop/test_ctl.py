"""leveretctl against the broker under test: the same verbs and the same expected output on Leveret and on
RabbitMQ (LEVERET_INTEROP_BROKER=rabbitmq), with real pika clients making the objects it lists and checking
what its writes did.

Verbs whose endpoints a broker's management API does not serve make the CLI say "does not support ...
yet"; their tests are skipped on Leveret only (`ctl_write`); Leveret serves every verb tested here now.
On RabbitMQ the output is also compared line by line with the real rabbitmqctl's.

RabbitMQ's counts reach its management API with the stats events (every 250 ms here), so checks of counts
poll until they match.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pika
import pika.exceptions
import pytest

from interop.brokers import Broker, ExtraUser, RabbitMQBroker
from interop.clients import pika_connection, unique
from interop.conftest import BROKER_KIND, new_broker
from leveret.broker.ctl.main import run

USERS = (ExtraUser("ctl-monitor", "monitor-secret", ("monitoring",)),)
RABBITMQCTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"
UNSUPPORTED = re.compile(r"does not support .* yet")


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()


Ctl = Callable[..., Result]


@pytest.fixture(scope="module")
def managed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    instance = new_broker(tmp_path_factory.mktemp("ctl"), management=True, users=USERS)
    try:
        instance.start()
        yield instance
    finally:
        instance.close()


@pytest.fixture
def api(managed: Broker) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=managed.management_url, auth=("guest", "guest"), timeout=10) as client:
        yield client


def _run(managed: Broker, argv: tuple[str, ...]) -> Result:
    out, err = io.StringIO(), io.StringIO()
    code = run(["--host", managed.host, "--port", str(managed.management_port), *argv], out=out, err=err)
    return Result(code, out.getvalue(), err.getvalue())


@pytest.fixture
def ctl(managed: Broker) -> Ctl:
    return lambda *argv: _run(managed, argv)


@pytest.fixture
def ctl_write(managed: Broker) -> Ctl:
    """ctl for verbs whose endpoints Leveret may not serve yet: skipped on Leveret when it does not."""

    def run_write(*argv: str) -> Result:
        result = _run(managed, argv)
        if BROKER_KIND == "leveret" and UNSUPPORTED.search(result.err):
            pytest.skip(f"Leveret's management API: {result.err.strip()}")
        return result

    return run_write


def eventually(
    check: Callable[[], Any], timeout: float = 15.0, pump: pika.BlockingConnection | None = None
) -> Any:
    """check()'s result once it stops raising AssertionError (RabbitMQ's stats lag behind)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            if pump is not None:
                pump.process_data_events(0.2)
            else:
                time.sleep(0.2)


def connection_name(connection: pika.BlockingConnection, broker: Broker) -> str:
    local_port = connection._impl._transport._sock.getsockname()[1]
    return f"127.0.0.1:{local_port} -> 127.0.0.1:{broker.port}"


# ---- list verbs ----------------------------------------------------------------------------------------

QUEUE_COLUMNS = ("name", "messages", "consumers", "messages_ready", "messages_unacknowledged", "durable")


def test_list_queues_prints_rabbitmqctls_table(managed: Broker, ctl: Ctl) -> None:
    name = unique("ctl-queue")
    with pika_connection(managed.url) as connection:
        channel = connection.channel()
        channel.queue_declare(
            name, durable=True, arguments={"x-dead-letter-exchange": "dlx", "x-max-length": 10}
        )
        for _ in range(3):
            channel.basic_publish("", name, b"m")
        consumer = connection.channel()
        consumer.basic_qos(prefetch_count=1)
        consumer.basic_consume(name, lambda *_: None)

        def listed() -> Result:
            result = ctl("list_queues", *QUEUE_COLUMNS, "arguments")
            assert result.code == 0, result.err
            row = f'{name}\t3\t1\t2\t1\ttrue\t[{{"x-dead-letter-exchange","dlx"}},{{"x-max-length",10}}]'
            assert row in result.lines
            return result

        result = eventually(listed, pump=connection)
        assert result.lines[:3] == [
            "Timeout: 60.0 seconds ...",
            "Listing queues for vhost / ...",
            "\t".join((*QUEUE_COLUMNS, "arguments")),
        ]
        channel.queue_delete(name)


def test_list_queues_formats_json_and_obeys_quiet_and_silent(managed: Broker, ctl: Ctl) -> None:
    name = unique("ctl-json")
    with pika_connection(managed.url) as connection:
        channel = connection.channel()
        channel.queue_declare(name, arguments={"x-max-length": 5})
        channel.basic_publish("", name, b"m")

        def listed() -> list[Any]:
            result = ctl("list_queues", "--formatter", "json", "name,messages", "durable", "arguments")
            assert result.code == 0 and result.out.startswith("[\n"), result.err
            rows = [row for row in json.loads(result.out) if row["name"] == name]
            assert rows == [
                {
                    "name": name,
                    "messages": 1,
                    "durable": False,
                    "arguments": [["x-max-length", "signedint", 5]],
                }
            ]
            return rows

        eventually(listed)
        quiet = ctl("-q", "list_queues", "name", "messages")
        assert quiet.lines[0] == "name\tmessages" and f"{name}\t1" in quiet.lines
        silent = ctl("list_queues", "--silent", "name", "messages")
        assert "name\tmessages" not in silent.lines and f"{name}\t1" in silent.lines
        no_headers = ctl("list_queues", "--no-table-headers", "name")
        assert no_headers.lines[:2] == ["Timeout: 60.0 seconds ...", "Listing queues for vhost / ..."]
        assert "name" not in no_headers.lines and name in no_headers.lines
        channel.queue_delete(name)


def test_a_missing_vhost_and_a_wrong_password_are_one_line_errors(managed: Broker, ctl: Ctl) -> None:
    missing = ctl("list_queues", "-p", "ctl-no-such-vhost")
    assert (missing.code, missing.out) == (69, "")
    assert missing.err == "Error: virtual host 'ctl-no-such-vhost' does not exist\n"
    refused = ctl("--password", "wrong", "list_queues")
    assert (refused.code, refused.out) == (77, "")
    assert refused.err == (
        f"Error: the management API at {managed.management_url} refused user 'guest' (Login failed)\n"
    )


def test_list_exchanges_and_bindings(managed: Broker, ctl: Ctl) -> None:
    exchange, queue = unique("ctl-exchange"), unique("ctl-bound")
    with pika_connection(managed.url) as connection:
        channel = connection.channel()
        channel.exchange_declare(exchange, "topic", durable=True)
        channel.queue_declare(queue)
        channel.queue_bind(queue, exchange, "a.#")
        exchanges = ctl("list_exchanges", "name", "type", "durable", "auto_delete", "internal", "arguments")
        assert exchanges.code == 0
        assert exchanges.lines[:2] == [
            "Listing exchanges for vhost / ...",
            "name\ttype\tdurable\tauto_delete\tinternal\targuments",
        ]
        for row in (f"{exchange}\ttopic\ttrue\tfalse\tfalse\t[]", "\tdirect\ttrue\tfalse\tfalse\t[]",
                    "amq.topic\ttopic\ttrue\tfalse\tfalse\t[]"):  # fmt: skip
            assert row in exchanges.lines
        default = ctl("list_exchanges")
        assert default.lines[1] == "name\ttype" and f"{exchange}\ttopic" in default.lines
        bindings = ctl("list_bindings")
        assert bindings.lines[:2] == [
            "Listing bindings for vhost /...",
            "source_name\tsource_kind\tdestination_name\tdestination_kind\trouting_key\targuments",
        ]
        assert f"{exchange}\texchange\t{queue}\tqueue\ta.#\t[]" in bindings.lines
        assert f"\texchange\t{queue}\tqueue\t{queue}\t[]" in bindings.lines
        channel.queue_delete(queue)
        channel.exchange_delete(exchange)


def test_list_connections_channels_and_consumers(managed: Broker, ctl: Ctl) -> None:
    queue, tag = unique("ctl-consumed"), unique("ctl-tag")
    with pika_connection(managed.url) as connection:
        channel = connection.channel()
        channel.queue_declare(queue, exclusive=True)
        channel.basic_qos(prefetch_count=7)
        channel.basic_consume(queue, lambda *_: None, consumer_tag=tag)
        name = connection_name(connection, managed)
        port = name.split(" ")[0].rsplit(":", 1)[1]

        def listed() -> tuple[Result, Result, Result]:
            connections = ctl(
                "list_connections", "user", "peer_host", "peer_port", "state", "protocol", "name"
            )
            assert f"guest\t127.0.0.1\t{port}\trunning\t{{0,9,1}}\t{name}" in connections.lines
            channels = ctl(
                "list_channels", "name", "number", "user", "consumer_count", "prefetch_count", "confirm",
                "transactional", "connection",
            )  # fmt: skip
            assert f"{name} (1)\t1\tguest\t1\t7\tfalse\tfalse\t{name}" in channels.lines
            consumers = ctl("list_consumers")
            assert f"{queue}\t{name} (1)\t{tag}\ttrue\t7\ttrue\t[]" in consumers.lines
            return connections, channels, consumers

        connections, channels, consumers = eventually(listed, pump=connection)
        assert connections.lines[:2] == [
            "Listing connections ...",
            "user\tpeer_host\tpeer_port\tstate\tprotocol\tname",
        ]
        assert channels.lines[0] == "Listing channels ..."
        assert consumers.lines[:2] == [
            "Listing consumers in vhost / ...",
            "queue_name\tchannel_pid\tconsumer_tag\tack_required\tprefetch_count\tactive\targuments",
        ]
        default = ctl("list_connections")
        assert default.lines[1] == "user\tpeer_host\tpeer_port\tstate"


def test_a_monitoring_user_may_list_but_not_the_users(managed: Broker) -> None:
    out, err = io.StringIO(), io.StringIO()
    login = [
        "--port",
        str(managed.management_port),
        "--username",
        "ctl-monitor",
        "--password",
        "monitor-secret",
    ]
    assert run([*login, "list_vhosts"], out=out, err=err) == 0, err.getvalue()
    assert run([*login, "list_users"], out=out, err=err) == 77
    assert err.getvalue() == (
        f"Error: the management API at {managed.management_url} refused user 'ctl-monitor' "
        "(Not administrator user)\n"
    )


def test_list_users_and_vhosts(ctl: Ctl) -> None:
    users = ctl("list_users")
    assert users.lines[:2] == ["Listing users ...", "user\ttags"]
    assert {"guest\t[administrator]", "ctl-monitor\t[monitoring]"} <= set(users.lines)
    as_json = json.loads(ctl("list_users", "--formatter", "json").out)
    assert {"user": "guest", "tags": ["administrator"]} in as_json
    vhosts = ctl("list_vhosts", "name", "tracing")
    assert vhosts.lines[:2] == ["Listing vhosts ...", "name\ttracing"] and "/\tfalse" in vhosts.lines


def test_list_permissions(ctl_write: Ctl) -> None:
    permissions = ctl_write("list_permissions")
    assert permissions.code == 0, permissions.err
    assert permissions.lines[:2] == ['Listing permissions for vhost "/" ...', "user\tconfigure\twrite\tread"]
    assert {"guest\t.*\t.*\t.*", "ctl-monitor\t.*\t.*\t.*"} <= set(permissions.lines)
    mine = ctl_write("list_user_permissions", "guest")
    assert mine.lines[:2] == ['Listing permissions for user "guest" ...', "vhost\tconfigure\twrite\tread"]
    assert "/\t.*\t.*\t.*" in mine.lines
    missing = ctl_write("list_user_permissions", "ctl-nobody")
    assert (missing.code, missing.err) == (67, 'Error: user "ctl-nobody" does not exist\n')


def test_the_api_is_found_from_the_environment_or_a_config_file(
    managed: Broker, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """No --host/--port: LEVERET_CTL_URL (with credentials), then a configuration's listeners.management."""
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setenv(
        "LEVERET_CTL_URL", f"http://ctl-monitor:monitor-secret@{managed.host}:{managed.management_port}"
    )
    assert run(["list_vhosts", "-q"], out=out, err=err) == 0, err.getvalue()
    lines = out.getvalue().splitlines()
    assert lines[0] == "name" and "/" in lines
    config = tmp_path / "leveret.yaml"
    config.write_text(f"listeners:\n  management: {{host: 0.0.0.0, port: {managed.management_port}}}\n")
    monkeypatch.setenv("LEVERET_CTL_URL", "http://guest:guest@127.0.0.1:1")  # --config wins
    out = io.StringIO()
    assert run(["--config", str(config), "list_users", "-s"], out=out, err=err) == 0, err.getvalue()
    assert "guest\t[administrator]" in out.getvalue().splitlines()


# ---- status --------------------------------------------------------------------------------------------


def test_status_and_cluster_status_show_the_node(managed: Broker, ctl: Ctl, api: httpx.Client) -> None:
    overview = api.get("/api/overview").json()
    node = overview["node"]
    status = ctl("status")
    assert status.code == 0, status.err
    assert status.lines[:3] == [f"Status of node {node} ...", "Runtime", ""]
    assert f"Node name: {node}" in status.lines
    assert f"Product name: {overview['product_name']}" in status.lines
    assert f"RabbitMQ version: {overview['rabbitmq_version']}" in status.lines
    assert "Alarms\n\n(none)\n" in status.out
    assert re.search(
        r"\nTotals\n\nConnection count: \d+\nQueue count: \d+\nVirtual host count: \d+\n", status.out
    )
    assert f"Interface: 127.0.0.1, port: {managed.port}, protocol: amqp, purpose: AMQP 0-9-1" in status.lines
    assert f"port: {managed.management_port}, protocol: http, purpose: HTTP API" in status.out
    facts = json.loads(ctl("status", "--formatter", "json").out)
    assert facts["node"] == node and facts["alarms"] == []

    cluster = ctl("cluster_status")
    assert cluster.code == 0, cluster.err
    assert cluster.lines[0] == f"Cluster status of node {node} ..."
    assert f"\nDisk Nodes\n\n{node}\n\nRunning Nodes\n\n{node}\n\nVersions\n\n{node}: " in cluster.out
    assert f"Cluster name: {overview['cluster_name']}" in cluster.lines
    assert f"Node: {node}, interface: 127.0.0.1, port: {managed.port}, protocol: amqp" in cluster.out
    assert json.loads(ctl("cluster_status", "--formatter", "json").out)["running_nodes"] == [node]


# ---- write verbs ---------------------------------------------------------------------------------------


def _whoami(managed: Broker, user: str, password: str) -> httpx.Response:
    return httpx.get(f"{managed.management_url}/api/whoami", auth=(user, password), timeout=10)


def test_users_are_added_tagged_repassworded_and_deleted(
    managed: Broker, ctl_write: Ctl, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = unique("ctl-user")
    added = ctl_write("add_user", user, "first-secret")
    assert (added.code, added.out, added.err) == (0, f'Adding user "{user}" ...\n', "")
    try:
        assert f"{user}\t[]" in ctl_write("list_users").lines
        again = ctl_write("add_user", user, "other")
        assert (again.code, again.err) == (70, f'Error: user "{user}" already exists\n')
        # Without a password on the command line, add_user reads it from standard input.
        from_stdin = f"{user}-stdin"
        monkeypatch.setattr("sys.stdin", io.StringIO("stdin-secret\n"))
        assert ctl_write("add_user", from_stdin).code == 0
        assert (
            _whoami(managed, from_stdin, "stdin-secret").status_code == 401
        )  # no tags: not a management user
        assert ctl_write("set_user_tags", from_stdin, "management").code == 0
        assert _whoami(managed, from_stdin, "stdin-secret").status_code == 200
        assert ctl_write("delete_user", from_stdin).code == 0

        tagged = ctl_write("set_user_tags", user, "monitoring", "policymaker")
        assert tagged.out == f'Setting tags for user "{user}" to [monitoring, policymaker] ...\n', tagged.err
        assert f"{user}\t[monitoring, policymaker]" in ctl_write("list_users").lines
        # The password survives the tags change.
        whoami = _whoami(managed, user, "first-secret")
        assert whoami.status_code == 200 and sorted(whoami.json()["tags"]) == ["monitoring", "policymaker"]

        changed = ctl_write("change_password", user, "second-secret")
        assert (changed.code, changed.out) == (0, f'Changing password for user "{user}" ...\n'), changed.err
        assert _whoami(managed, user, "second-secret").status_code == 200
        assert _whoami(managed, user, "first-secret").status_code == 401
        assert f"{user}\t[monitoring, policymaker]" in ctl_write("list_users").lines
    finally:
        deleted = ctl_write("delete_user", user)
    assert (deleted.code, deleted.out) == (0, f'Deleting user "{user}" ...\n'), deleted.err
    assert not any(line.startswith(f"{user}\t") for line in ctl_write("list_users").lines)
    gone = ctl_write("delete_user", user)
    assert (gone.code, gone.err) == (67, f'Error: user "{user}" does not exist\n')
    assert ctl_write("change_password", user, "x").code == 67


def test_vhosts_and_permissions_govern_amqp_access(managed: Broker, ctl_write: Ctl) -> None:
    vhost, user = unique("ctl-vhost"), unique("ctl-perm")
    url = f"amqp://{user}:secret@{managed.host}:{managed.port}/{vhost}"
    assert ctl_write("add_user", user, "secret").code == 0
    try:
        added = ctl_write("add_vhost", vhost)
        assert (added.code, added.out) == (0, f'Adding vhost "{vhost}" ...\n'), added.err
        assert vhost in ctl_write("list_vhosts").lines

        granted = ctl_write("set_permissions", "-p", vhost, user, "^ctl-ok", ".*", ".*")
        assert granted.out == f'Setting permissions for user "{user}" in vhost "{vhost}" ...\n', granted.err
        assert f"{user}\t^ctl-ok\t.*\t.*" in ctl_write("list_permissions", "-p", vhost).lines
        with pika_connection(url) as connection:
            channel = connection.channel()
            channel.queue_declare("ctl-ok-queue")
            with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
                channel.queue_declare("ctl-not-allowed")
            assert refused.value.reply_code == 403

        cleared = ctl_write("clear_permissions", "-p", vhost, user)
        assert cleared.code == 0, cleared.err
        assert not any(
            line.startswith(f"{user}\t") for line in ctl_write("list_permissions", "-p", vhost).lines
        )
        with pytest.raises(pika.exceptions.AMQPConnectionError):
            pika.BlockingConnection(pika.URLParameters(url))

        no_user = ctl_write("set_permissions", "-p", vhost, "ctl-nobody", ".*", ".*", ".*")
        assert (no_user.code, no_user.err) == (67, 'Error: user "ctl-nobody" does not exist\n')
    finally:
        deleted = ctl_write("delete_vhost", vhost)
        ctl_write("delete_user", user)
    assert (deleted.code, deleted.out) == (0, f'Deleting vhost "{vhost}" ...\n'), deleted.err
    assert vhost not in ctl_write("list_vhosts").lines
    gone = ctl_write("delete_vhost", vhost)
    assert (gone.code, gone.err) == (69, f"Error: virtual host '{vhost}' does not exist\n")


def test_purge_queue_empties_it(managed: Broker, ctl_write: Ctl) -> None:
    queue = unique("ctl-purged")
    with pika_connection(managed.url) as connection:
        channel = connection.channel()
        channel.queue_declare(queue)
        for _ in range(3):
            channel.basic_publish("", queue, b"m")
        purged = ctl_write("purge_queue", queue)
        assert (purged.code, purged.out) == (0, f"Purging queue '{queue}' in vhost '/' ...\n"), purged.err
        assert channel.basic_get(queue, auto_ack=True) == (None, None, None)
        assert channel.queue_declare(queue, passive=True).method.message_count == 0
        channel.queue_delete(queue)
    missing = ctl_write("purge_queue", queue)
    assert (missing.code, missing.err) == (69, f"Error: queue '{queue}' in vhost '/' does not exist\n")


def test_delete_queue_reports_its_messages_and_honours_if_empty(
    managed: Broker, ctl_write: Ctl, api: httpx.Client
) -> None:
    queue = unique("ctl-deleted")
    with pika_connection(managed.url) as connection:
        channel = connection.channel()
        channel.queue_declare(queue)
        for _ in range(2):
            channel.basic_publish("", queue, b"m")

        def counted() -> None:
            assert api.get(f"/api/queues/%2F/{queue}").json().get("messages_ready") == 2

        eventually(counted)
        kept = ctl_write("delete_queue", queue, "--if-empty")
        assert kept.code == 70 and "not empty" in kept.err, kept.err
        assert channel.queue_declare(queue, passive=True).method.message_count == 2
        deleted = ctl_write("delete_queue", queue, "-q")
        assert deleted.code == 0, deleted.err
        assert deleted.lines == ["Queue was successfully deleted with 2 ready messages"]
        channel.queue_declare(queue)
        for _ in range(2):
            channel.basic_publish("", queue, b"m")
        eventually(counted)
        deleted = ctl_write("delete_queue", queue)
        assert deleted.lines == [
            f"Deleting queue '{queue}' on vhost '/' ...",
            "Queue was successfully deleted with 2 ready messages",
        ]
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as missing:
            channel.queue_declare(queue, passive=True)
        assert missing.value.reply_code == 404
    gone = ctl_write("delete_queue", queue)
    assert (gone.code, gone.err) == (69, f"Error: queue '{queue}' in vhost '/' does not exist\n")


def test_definitions_are_exported_and_imported(
    managed: Broker, ctl_write: Ctl, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue, exchange = unique("ctl-exported"), unique("ctl-exported-x")
    with pika_connection(managed.url) as connection:
        channel = connection.channel()
        channel.queue_declare(queue, durable=True)
        channel.exchange_declare(exchange, "direct", durable=True)
        channel.queue_bind(queue, exchange, "k")
        target = tmp_path / "exported.json"
        exported = ctl_write("export_definitions", str(target))
        assert exported.out == f'Exporting definitions in JSON to a file at "{target}" ...\n', exported.err
        definitions = json.loads(target.read_text())
        assert {
            "name": queue,
            "vhost": "/",
            "durable": True,
            "auto_delete": False,
            "arguments": {},
        }.items() <= (next(q for q in definitions["queues"] if q["name"] == queue).items())
        assert any(x["name"] == exchange and x["type"] == "direct" for x in definitions["exchanges"])
        assert any(b["source"] == exchange and b["destination"] == queue for b in definitions["bindings"])
        assert any(u["name"] == "guest" for u in definitions["users"])
        to_stdout = ctl_write("export_definitions", "-")
        assert json.loads(to_stdout.out)["queues"] and to_stdout.out.count("\n") == 1
        channel.queue_delete(queue)
        channel.exchange_delete(exchange)

        imported_queue, imported_exchange = unique("ctl-imported"), unique("ctl-imported-x")
        source = tmp_path / "import.json"
        source.write_text(json.dumps({
            "queues": [{"name": imported_queue, "vhost": "/", "durable": True, "auto_delete": False,
                        "arguments": {}}],
            "exchanges": [{"name": imported_exchange, "vhost": "/", "type": "fanout", "durable": True,
                           "auto_delete": False, "internal": False, "arguments": {}}],
            "bindings": [{"source": imported_exchange, "vhost": "/", "destination": imported_queue,
                          "destination_type": "queue", "routing_key": "", "arguments": {}}],
        }))  # fmt: skip
        imported = ctl_write("import_definitions", str(source))
        assert imported.code == 0, imported.err
        assert imported.lines == [
            f'Importing definitions in JSON from a file at "{source}" ...',
            "Definitions imported.",
        ]
        channel.basic_publish(imported_exchange, "", b"through the imported binding")
        assert eventually(lambda: _got(channel, imported_queue)) == b"through the imported binding"

        from_stdin = unique("ctl-stdin")
        monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps({"queues": [
            {"name": from_stdin, "vhost": "/", "durable": False, "auto_delete": False, "arguments": {}}
        ]})))  # fmt: skip
        assert ctl_write("import_definitions", "-").code == 0
        eventually(lambda: _declared(connection, from_stdin))
        for name in (imported_queue, from_stdin):
            channel.queue_delete(name)
        channel.exchange_delete(imported_exchange)

    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    bad = ctl_write("import_definitions", str(broken))
    assert bad.code == 65 and bad.err.startswith(f"Error: {broken} is not valid JSON: ")


def _got(channel: Any, queue: str) -> bytes:
    method, _, body = channel.basic_get(queue, auto_ack=True)
    assert method is not None
    return bytes(body)


def _declared(connection: pika.BlockingConnection, queue: str) -> None:
    channel = connection.channel()
    try:
        channel.queue_declare(queue, passive=True)
    except pika.exceptions.ChannelClosedByBroker as error:
        raise AssertionError(f"{queue} is not declared") from error
    channel.close()


def test_policies_apply_to_live_queues(managed: Broker, ctl_write: Ctl) -> None:
    policy = unique("ctl-policy")
    queue = f"{policy}-q"
    definition = '{"max-length":1}'
    with pika_connection(managed.url) as connection:
        channel = connection.channel()
        channel.queue_declare(queue)
        set_ = ctl_write(
            "set_policy", policy, f"^{policy}-", definition, "--apply-to", "queues", "--priority", "3"
        )
        assert set_.code == 0, set_.err
        assert set_.out == (
            f'Setting policy "{policy}" for pattern "^{policy}-" to "{definition}" with priority "3" '
            'for vhost "/" ...\n'
        )
        try:
            listed = ctl_write("list_policies")
            assert listed.lines[:2] == [
                'Listing policies for vhost "/" ...',
                "vhost\tname\tpattern\tapply-to\tdefinition\tpriority",
            ]
            assert f"/\t{policy}\t^{policy}-\tqueues\t{definition}\t3" in listed.lines

            def capped() -> None:
                for _ in range(3):
                    channel.basic_publish("", queue, b"m")
                assert channel.queue_declare(queue, passive=True).method.message_count == 1

            eventually(capped)
        finally:
            cleared = ctl_write("clear_policy", policy)
        assert (cleared.code, cleared.out) == (0, f'Clearing policy "{policy}" on vhost "/" ...\n'), (
            cleared.err
        )
        assert not any(policy in line for line in ctl_write("list_policies").lines)
        channel.queue_delete(queue)
    again = ctl_write("clear_policy", policy)
    assert (again.code, again.err) == (69, f"Error: policy '{policy}' does not exist in vhost '/'\n")
    bad = ctl_write("set_policy", policy, ".*", "{not json")
    assert bad.code == 65 and bad.err.startswith("Error: the policy definition is not valid JSON")


def test_operator_policies_cap_live_queues_below_policies(managed: Broker, ctl: Ctl) -> None:
    name = unique("ctl-op-policy")
    queue = f"{name}-q"
    with pika_connection(managed.url) as connection:
        channel = connection.channel()
        channel.queue_declare(queue)
        assert ctl("set_policy", name, f"^{name}-", '{"max-length":5}').code == 0
        set_ = ctl("set_operator_policy", name, f"^{name}-", '{"max-length":2}', "--apply-to", "queues")
        assert (set_.code, set_.out) == (0, (
            f'Setting operator policy override "{name}" for pattern "^{name}-" to "{{"max-length":2}}" with '
            'priority "0" for vhost "/" ...\n'
        )), set_.err  # fmt: skip
        try:
            listed = ctl("list_operator_policies")
            assert listed.lines[:2] == [
                'Listing operator policy overrides for vhost "/" ...',
                "vhost\tname\tpattern\tapply-to\tdefinition\tpriority",
            ]
            assert f'/\t{name}\t^{name}-\tqueues\t{{"max-length":2}}\t0' in listed.lines

            def capped() -> None:
                for _ in range(3):
                    channel.basic_publish("", queue, b"m")
                assert channel.queue_declare(queue, passive=True).method.message_count == 2

            eventually(capped)
        finally:
            cleared = ctl("clear_operator_policy", name)
            ctl("clear_policy", name)
        assert (cleared.code, cleared.out) == (0, f'Clearing operator policy "{name}" on vhost "/" ...\n')
        assert not any(name in line for line in ctl("list_operator_policies").lines)
        channel.queue_delete(queue)
    again = ctl("clear_operator_policy", name)
    assert (again.code, again.err) == (69, f"Error: policy '{name}' does not exist in vhost '/'\n")


def test_user_limits_are_set_listed_enforced_and_cleared(managed: Broker, ctl: Ctl) -> None:
    user = unique("ctl-limited")
    assert ctl("add_user", user, "pw").code == 0
    assert ctl("set_permissions", user, ".*", ".*", ".*").code == 0
    set_ = ctl("set_user_limits", user, '{"max-connections": 1, "max-channels": 1}')
    assert (set_.code, set_.out) == (0, (
        f'Setting user limits to "{{"max-connections": 1, "max-channels": 1}}" for user "{user}" ...\n'
    )), set_.err  # fmt: skip
    listed = ctl("list_user_limits", "--user", user)
    assert listed.lines == [f'Listing limits for user "{user}" ...', '{"max-channels":1,"max-connections":1}']
    as_json = ctl("list_user_limits", "--user", user, "--formatter", "json")
    assert json.loads(as_json.out) == {"message": '{"max-channels":1,"max-connections":1}'}
    url = f"amqp://{user}:pw@{managed.host}:{managed.port}/%2F"
    with pika_connection(url) as connection:
        connection.channel()
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
            connection.channel()
        assert closed.value.reply_code == 530
    cleared = ctl("clear_user_limits", user, "max-channels")
    assert (cleared.code, cleared.out) == (0, f'Clearing "max-channels" limit for user "{user}" ...\n')
    assert ctl("list_user_limits", "--user", user).lines[1] == '{"max-connections":1}'
    with pika_connection(url) as connection:
        connection.channel()
        connection.channel()
    everything = ctl("clear_user_limits", user, "all")
    assert (everything.code, everything.out) == (0, f'Clearing all limits for user "{user}" ...\n')
    assert ctl("list_user_limits", "--user", user).lines[1] == "{}"
    bad = ctl("set_user_limits", user, '{"max-foo": 1}')
    assert bad.code == 70 and "Unrecognised terms" in bad.err
    missing = ctl("set_user_limits", "ctl-nobody", '{"max-channels": 1}')
    assert (missing.code, missing.err) == (67, 'Error: user "ctl-nobody" does not exist\n')
    assert ctl("list_user_limits", "--user", "ctl-nobody").code == 67
    assert ctl("set_user_limits", user, "notjson").code == 65
    ctl("delete_user", user)


def test_close_connection_tells_the_client_why(managed: Broker, ctl: Ctl, ctl_write: Ctl) -> None:
    with pika_connection(managed.url) as connection:
        name = connection_name(connection, managed)
        eventually(lambda: _listed(ctl, name), pump=connection)
        closed = ctl_write("close_connection", name, "ctl says bye")
        assert (closed.code, closed.out) == (0, f'Closing connection "{name}", reason: ctl says bye...\n'), (
            closed.err
        )
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as error:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                connection.process_data_events(0.2)
        assert error.value.reply_code == 320 and "ctl says bye" in error.value.reply_text
    eventually(lambda: _not_listed(ctl, name))
    missing = ctl_write("close_connection", name, "again")
    assert (missing.code, missing.err) == (69, f"Error: connection '{name}' does not exist\n")


def _listed(ctl: Ctl, name: str) -> None:
    assert name in ctl("list_connections", "name").lines


def _not_listed(ctl: Ctl, name: str) -> None:
    assert name not in ctl("list_connections", "name").lines


# ---- the same output as rabbitmqctl ---------------------------------------------------------------------

COMPARED = (
    ("list_queues", "name", "messages", "consumers", "messages_ready", "messages_unacknowledged", "durable",
     "auto_delete", "exclusive", "arguments", "policy", "state", "type"),
    ("list_queues", "--formatter", "json", "name", "messages", "arguments", "durable"),
    ("list_exchanges", "name", "type", "durable", "auto_delete", "internal", "arguments"),
    ("list_bindings",),
    ("list_connections", "name", "user", "vhost", "peer_host", "peer_port", "state", "channels", "protocol",
     "auth_mechanism", "ssl"),
    ("list_channels", "name", "number", "user", "vhost", "consumer_count", "prefetch_count", "confirm",
     "transactional", "messages_unacknowledged"),
    ("list_consumers", "queue_name", "consumer_tag", "ack_required", "prefetch_count", "active",
     "activity_status", "arguments"),
    ("list_users",),
    ("list_vhosts", "name", "tracing"),
    ("list_permissions",),
    ("list_user_permissions", "guest"),
    ("list_policies",),
    ("list_operator_policies",),
    ("list_user_limits", "--user", "guest"),
)  # fmt: skip


def _same_output(ours: str, theirs: str) -> None:
    """Equal but for the order of the rows (rabbitmqctl's is the order of its tables)."""
    if ours.startswith("["):
        assert sorted(json.loads(ours), key=json.dumps) == sorted(json.loads(theirs), key=json.dumps)
        return
    ours_lines, theirs_lines = ours.splitlines(), theirs.splitlines()
    head = next((i for i, line in enumerate(theirs_lines) if "\t" in line), len(theirs_lines))
    assert ours_lines[: head + 1] == theirs_lines[: head + 1]  # the informational lines and the header
    assert sorted(ours_lines[head + 1 :]) == sorted(line for line in theirs_lines[head + 1 :] if line)


@pytest.mark.skipif(BROKER_KIND != "rabbitmq", reason="compares with rabbitmqctl: RabbitMQ only")
@pytest.mark.skipif(not os.access(RABBITMQCTL, os.X_OK), reason="rabbitmqctl is not installed")
@pytest.mark.parametrize("argv", COMPARED, ids=lambda argv: " ".join(argv))
def test_the_output_is_rabbitmqctls(managed: Broker, ctl: Ctl, argv: tuple[str, ...]) -> None:
    assert isinstance(managed, RabbitMQBroker)
    queue, tag = unique("ctl-compared"), unique("ctl-compared-tag")
    with pika_connection(managed.url) as connection:
        channel = connection.channel()
        channel.queue_declare(queue, arguments={"x-max-length": 10, "x-message-ttl": 60000})
        channel.queue_bind(queue, "amq.topic", "compared.#")
        channel.basic_publish("", queue, b"m")
        channel.basic_qos(prefetch_count=3)
        channel.basic_consume(queue, lambda *_: None, consumer_tag=tag)
        rabbitmqctl(managed, "set_policy", "ctl-compared", "^ctl-never-$", '{"max-length":9}')
        rabbitmqctl(managed, "set_operator_policy", "ctl-compared", "^ctl-never-$", '{"max-length":8}')

        def compared() -> None:
            ours = ctl(*argv)
            assert ours.code == 0, ours.err
            _same_output(ours.out, rabbitmqctl(managed, *argv))

        try:
            eventually(compared, pump=connection)
        finally:
            rabbitmqctl(managed, "clear_policy", "ctl-compared")
            rabbitmqctl(managed, "clear_operator_policy", "ctl-compared")
            channel.queue_delete(queue)


def rabbitmqctl(broker: RabbitMQBroker, *argv: str) -> str:
    """The real rabbitmqctl against the private node: its cookie is in the node's HOME, as its env gives."""
    command = [RABBITMQCTL, "-n", broker.nodename, *argv]
    result = subprocess.run(command, env=broker.environment(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout
