"""Users, vhosts, permissions and policies in a cluster (3 etcd members, 3 Leveret nodes with management
listeners): a change made over HTTP on one node is an etcd transaction every node applies, so it holds on
all of them, and across a node's restart. Leveret-only (it starts nodes of its own)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pika
import pika.exceptions
import pytest

from interop.clients import wait_until
from interop.cluster_support import eventually, queue_leaders, start_cluster
from interop.conftest import BROKER_KIND
from leveret.broker.server.local_cluster import LocalCluster

pytestmark = pytest.mark.skipif(BROKER_KIND != "leveret", reason="starts Leveret nodes of its own")
ALL = {"configure": ".*", "write": ".*", "read": ".*"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    yield from start_cluster(tmp_path_factory.mktemp("cluster-admin"), management=True)


def api(cluster: LocalCluster, index: int) -> httpx.Client:
    url = cluster.nodes[index].management_url
    assert url is not None
    return httpx.Client(base_url=url, auth=("guest", "guest"), timeout=10, headers={"connection": "close"})


def connect(
    cluster: LocalCluster, index: int, user: str, password: str, vhost: str = "/"
) -> pika.BlockingConnection:
    params = pika.URLParameters(cluster.nodes[index].amqp_url)
    params.credentials = pika.PlainCredentials(user, password)
    params.virtual_host = vhost
    params.connection_attempts = 1
    return pika.BlockingConnection(params)


def logs_in(cluster: LocalCluster, index: int, user: str, password: str, vhost: str = "/") -> bool:
    try:
        connect(cluster, index, user, password, vhost).close()
    except (pika.exceptions.ProbableAuthenticationError, pika.exceptions.ProbableAccessDeniedError):
        return False
    return True


def declare_refusal(
    cluster: LocalCluster, index: int, user: str, password: str, queue: str
) -> tuple[int, str] | None:
    """None when `user` may declare `queue` on node `index`, else the channel's close code and text."""
    with connect(cluster, index, user, password) as connection:
        try:
            connection.channel().queue_declare(queue, auto_delete=True)
        except pika.exceptions.ChannelClosedByBroker as closed:
            return closed.reply_code, closed.reply_text
    return None


def test_a_user_made_on_one_node_logs_in_on_another(cluster: LocalCluster) -> None:
    with api(cluster, 0) as a:
        assert a.put("/api/users/alice", json={"password": "s3cret", "tags": ""}).status_code == 201
        assert a.put("/api/permissions/%2F/alice", json=ALL).status_code == 201
    wait_until(lambda: logs_in(cluster, 2, "alice", "s3cret"), what="alice logs in on node3")
    assert not logs_in(cluster, 2, "alice", "wrong")
    with api(cluster, 1) as b:
        assert b.get("/api/users/alice").json()["name"] == "alice"
        assert b.delete("/api/users/alice").status_code == 204
    wait_until(lambda: not logs_in(cluster, 0, "alice", "s3cret"), what="alice refused on node1")


def test_permissions_changed_on_one_node_refuse_on_another(cluster: LocalCluster) -> None:
    with api(cluster, 0) as a:
        assert a.put("/api/users/bob", json={"password": "pw", "tags": ""}).status_code == 201
        assert a.put("/api/permissions/%2F/bob", json=ALL).status_code == 201
    wait_until(lambda: logs_in(cluster, 0, "bob", "pw") and logs_in(cluster, 1, "bob", "pw"))
    assert declare_refusal(cluster, 0, "bob", "pw", "bob.q") is None
    with api(cluster, 1) as b:
        limited = {"configure": "^mine\\.", "write": ".*", "read": ".*"}
        assert b.put("/api/permissions/%2F/bob", json=limited).status_code == 204
    refused = (403, "ACCESS_REFUSED - access to queue 'bob.q' in vhost '/' refused for user 'bob'")
    wait_until(lambda: declare_refusal(cluster, 0, "bob", "pw", "bob.q") == refused, what="the 403 on node1")
    assert declare_refusal(cluster, 0, "bob", "pw", "mine.q") is None


def test_a_vhost_added_on_one_node_is_used_on_another_and_deleted_everywhere(cluster: LocalCluster) -> None:
    with api(cluster, 2) as c:
        assert c.put("/api/vhosts/shared").status_code == 201  # guest, its creator, may use it
    wait_until(lambda: logs_in(cluster, 0, "guest", "guest", "shared"), what="vhost shared on node1")
    with connect(cluster, 0, "guest", "guest", "shared") as connection:
        connection.channel().queue_declare("in.shared", durable=True)
    with api(cluster, 1) as b:
        wait_until(lambda: b.get("/api/queues/shared/in.shared").status_code == 200, what="queue on node2")
    held = connect(cluster, 1, "guest", "guest", "shared")
    with api(cluster, 0) as a:
        assert a.delete("/api/vhosts/shared").status_code == 204
    # Its connections on every node are closed as RabbitMQ closes them, and nobody can open one.
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
        held.process_data_events(time_limit=10)
        held.process_data_events(time_limit=10)
    assert closed.value.reply_code == 320
    for index in range(3):
        wait_until(lambda index=index: not logs_in(cluster, index, "guest", "guest", "shared"))
    with api(cluster, 2) as c:
        assert c.get("/api/vhosts/shared").status_code == 404
        assert c.put("/api/vhosts/shared").status_code == 201  # made again: empty
    with api(cluster, 1) as b:
        wait_until(lambda: b.get("/api/vhosts/shared").status_code == 200)
        assert b.get("/api/queues/shared/in.shared").status_code == 404
        assert b.delete("/api/vhosts/shared").status_code == 204


def test_a_policy_set_on_one_node_caps_a_queue_led_by_another(cluster: LocalCluster) -> None:
    with connect(cluster, 0, "guest", "guest") as connection:
        connection.channel().queue_declare("capped.q", durable=True)
    leader = eventually(lambda: queue_leaders(cluster).get("capped.q"))
    index = next(i for i, node in enumerate(cluster.nodes) if node.name != leader)
    leader_index = next(i for i, node in enumerate(cluster.nodes) if node.name == leader)
    policy = {"pattern": "^capped\\.", "definition": {"max-length": 2}, "apply-to": "queues"}
    with api(cluster, index) as other, api(cluster, leader_index) as led:
        assert other.put("/api/policies/%2F/cap", json=policy).status_code == 201
        wait_until(lambda: led.get("/api/queues/%2F/capped.q").json().get("policy") == "cap")
        with connect(cluster, index, "guest", "guest") as connection:
            channel = connection.channel()
            channel.confirm_delivery()
            for n in range(5):
                channel.basic_publish("", "capped.q", f"m{n}".encode())
        with connect(cluster, leader_index, "guest", "guest") as connection:
            count = connection.channel().queue_declare("capped.q", passive=True).method.message_count
        assert count == 2
    # The leader's node dies: the new leader's queue follows the policy too.
    cluster.kill_node(leader_index)
    try:
        new_leader = eventually(lambda: (queue_leaders(cluster).get("capped.q") or leader) != leader, 15)
        new_leader = queue_leaders(cluster)["capped.q"]
        new_index = next(i for i, node in enumerate(cluster.nodes) if node.name == new_leader)
        with api(cluster, new_index) as led:
            wait_until(lambda: led.get("/api/queues/%2F/capped.q").json().get("leader") == new_leader)
            with connect(cluster, new_index, "guest", "guest") as connection:
                channel = connection.channel()
                channel.confirm_delivery()
                for n in range(5):
                    channel.basic_publish("", "capped.q", f"again{n}".encode())
                count = channel.queue_declare("capped.q", passive=True).method.message_count
            assert count == 2
            assert led.delete("/api/policies/%2F/cap").status_code == 204
            wait_until(lambda: led.get("/api/queues/%2F/capped.q").json().get("policy") is None)
            assert led.delete("/api/queues/%2F/capped.q").status_code == 204
    finally:
        cluster.start_node(cluster.nodes[leader_index])
        cluster.wait_node(cluster.nodes[leader_index])


def test_definitions_imported_on_one_node_are_on_every_node(cluster: LocalCluster) -> None:
    document = {
        "users": [{"name": "carol", "password": "pw", "tags": "monitoring"}],
        "vhosts": [{"name": "imported"}],
        "permissions": [
            {"user": name, "vhost": "imported", "configure": ".*", "write": ".*", "read": ".*"}
            for name in ("carol", "guest")
        ],
        "policies": [
            {
                "vhost": "imported",
                "name": "ttl",
                "pattern": ".*",
                "apply-to": "queues",
                "priority": 0,
                "definition": {"message-ttl": 60000},
            }
        ],
        "exchanges": [{"vhost": "imported", "name": "imp.x", "type": "fanout", "durable": True}],
        "queues": [{"vhost": "imported", "name": "imp.q", "durable": True}],
        "bindings": [
            {
                "vhost": "imported",
                "source": "imp.x",
                "destination": "imp.q",
                "destination_type": "queue",
                "routing_key": "",
            }
        ],
    }
    with api(cluster, 1) as b:
        assert b.post("/api/definitions", json=document).status_code == 204
    for index in (0, 2):
        with api(cluster, index) as other:
            wait_until(
                lambda other=other: (
                    other.get("/api/bindings/imported/e/imp.x/q/imp.q").status_code == 200
                    and other.get("/api/bindings/imported/e/imp.x/q/imp.q").json() != []
                )
            )
            assert other.get("/api/users/carol").json()["tags"] in (["monitoring"], "monitoring")
            assert other.get("/api/policies/imported/ttl").json()["definition"] == {"message-ttl": 60000}
            assert other.get("/api/exchanges/imported/imp.x").json()["type"] == "fanout"
        assert logs_in(cluster, index, "carol", "pw", "imported")


def test_a_restarted_node_keeps_them_and_learns_what_changed_while_it_was_down(cluster: LocalCluster) -> None:
    with api(cluster, 0) as a:
        assert a.put("/api/users/dave", json={"password": "pw", "tags": ""}).status_code == 201
        assert a.put("/api/vhosts/kept").status_code == 201
        assert a.put("/api/permissions/kept/dave", json=ALL).status_code == 201
        assert (
            a.put(
                "/api/policies/kept/lim", json={"pattern": ".*", "definition": {"max-length": 9}}
            ).status_code
            == 201
        )
    wait_until(lambda: logs_in(cluster, 2, "dave", "pw", "kept"))
    cluster.kill_node(2)
    with api(cluster, 1) as b:
        assert b.put("/api/users/erin", json={"password": "pw", "tags": ""}).status_code == 201
        assert b.put("/api/permissions/kept/erin", json=ALL).status_code == 201
        # The configured user's password changed at run time: etcd's record wins over the file's at a start.
        assert (
            b.put("/api/users/guest", json={"password": "changed", "tags": "administrator"}).status_code
            == 204
        )
    try:
        cluster.start_node(cluster.nodes[2])
        cluster.wait_node(cluster.nodes[2])
        assert logs_in(cluster, 2, "dave", "pw", "kept")
        assert logs_in(cluster, 2, "erin", "pw", "kept")
        assert not logs_in(cluster, 2, "guest", "guest")
        assert logs_in(cluster, 2, "guest", "changed")
        url = cluster.nodes[2].management_url
        with httpx.Client(base_url=str(url), auth=("guest", "changed"), timeout=10) as c:
            assert c.get(f"/api/policies/kept/{quote('lim')}").json()["definition"] == {"max-length": 9}
    finally:
        with httpx.Client(
            base_url=str(cluster.nodes[1].management_url), auth=("guest", "changed"), timeout=10
        ) as b:
            assert (
                b.put("/api/users/guest", json={"password": "guest", "tags": "administrator"}).status_code
                == 204
            )
        wait_until(lambda: all(logs_in(cluster, i, "guest", "guest") for i in range(3)))


def test_a_load_definitions_file_seeds_the_cluster(tmp_path: Path) -> None:
    """Every node reads the same file at start: its users and vhosts seed etcd, its exchanges and queues
    are declared through etcd once the node has joined."""
    path = tmp_path / "definitions.json"
    document = {
        "users": [{"name": "frank", "password": "pw", "tags": ""}],
        "vhosts": [{"name": "from-file"}],
        "permissions": [
            {"user": name, "vhost": "from-file", "configure": ".*", "write": ".*", "read": ".*"}
            for name in ("frank", "guest")
        ],
        "exchanges": [{"vhost": "from-file", "name": "file.x", "type": "topic", "durable": True}],
        "queues": [{"vhost": "from-file", "name": "file.q", "durable": True}],
    }
    path.write_text(json.dumps(document), encoding="utf-8")
    for cluster in start_cluster(tmp_path / "cluster", load_definitions=path):
        for index in range(3):
            assert logs_in(cluster, index, "frank", "pw", "from-file")
            with connect(cluster, index, "guest", "guest", "from-file") as connection:
                channel = connection.channel()
                channel.exchange_declare("file.x", "topic", passive=True)
                channel.queue_declare("file.q", passive=True)
