"""Replicated queues on a real cluster (3 etcd members, 3 Leveret nodes): confirmed messages survive kill -9
of the leader, unacked ones come back redelivered, a leader paused past its lease confirms nothing, no
majority means no confirms, and a follower back from the dead catches up. Clients use the leader's node
(found in etcd). Leveret only."""

from __future__ import annotations

import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pika
import pika.exceptions
import pytest

from interop.cluster_support import start_cluster
from interop.conftest import BROKER_KIND
from leveret.broker.cluster.etcd_ops import Get, KeyValue, range_result
from leveret.broker.cluster.keys import KeyLayout
from leveret.broker.cluster.leadership import isr_members, leader_node
from leveret.broker.server.local_cluster import LocalCluster

pytestmark = pytest.mark.skipif(BROKER_KIND != "leveret", reason="starts Leveret nodes of its own")

LAYOUT = KeyLayout("/leveret/")
QUEUE = "repl.q"
PERSISTENT = pika.BasicProperties(delivery_mode=2)
TRANSIENT = pika.BasicProperties(delivery_mode=1)


@pytest.fixture
def cluster(tmp_path: Any) -> Iterator[LocalCluster]:
    yield from start_cluster(tmp_path)


def etcd_range(cluster: LocalCluster, prefix: bytes) -> dict[str, KeyValue]:
    body = Get.prefix(prefix).to_json()
    for url in cluster.etcd.endpoints:
        try:
            answer = httpx.post(f"{url}/v3/kv/range", json=body, timeout=2).json()
        except httpx.HTTPError:
            continue
        return {kv.key.decode().rsplit("/", 1)[1]: kv for kv in range_result(answer).kvs}
    raise AssertionError("no etcd member answered")


def leader(cluster: LocalCluster) -> tuple[int, int] | None:
    """(index of the leader's node, epoch), from etcd."""
    kv = etcd_range(cluster, LAYOUT.leaders).get(QUEUE)
    return (int(leader_node(kv)[-1]) - 1, kv.create_revision) if kv is not None else None


def in_sync(cluster: LocalCluster) -> tuple[str, ...]:
    kv = etcd_range(cluster, LAYOUT.in_sync).get(QUEUE)
    return isr_members(kv) if kv is not None else ()


def eventually(condition: Callable[[], Any], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)
    return value


def connect(cluster: LocalCluster, index: int) -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.URLParameters(cluster.nodes[index].amqp_url))


def confirming_channel(connection: pika.BlockingConnection) -> Any:
    channel = connection.channel()
    channel.confirm_delivery()
    return channel


def declared_and_led(cluster: LocalCluster) -> tuple[int, int]:
    """Declare the queue; wait for its leader, every replica in sync, and a first confirm there."""
    connection = connect(cluster, 0)
    connection.channel().queue_declare(QUEUE, durable=True)
    connection.close()
    index, epoch = eventually(lambda: leader(cluster))
    eventually(lambda: len(in_sync(cluster)) == 3)

    def confirms() -> bool:
        try:
            with connect(cluster, index) as probe:
                confirming_channel(probe).basic_publish("", QUEUE, b"warm-up", PERSISTENT)
            return True
        except pika.exceptions.NackError:
            return False  # the node has not built the leader's queue yet

    eventually(confirms)
    with connect(cluster, index) as drain:
        drain.channel().queue_purge(QUEUE)
    return index, epoch


def drain(cluster: LocalCluster, index: int) -> list[tuple[bytes, bool]]:
    """Every message of the queue on that node: (body, redelivered), acked."""
    with connect(cluster, index) as connection:
        channel = connection.channel()
        got = []
        while True:
            method, _, body = channel.basic_get(QUEUE)
            if method is None:
                return got
            got.append((body, method.redelivered))
            channel.basic_ack(method.delivery_tag)


def new_leader(cluster: LocalCluster, old: int, epoch: int) -> int:
    def moved() -> int | None:
        found = leader(cluster)
        return found[0] + 1 if found is not None and found[0] != old and found[1] > epoch else None

    index: int = eventually(moved) - 1

    def serving() -> bool:
        try:
            with connect(cluster, index) as connection:
                connection.channel().queue_declare(QUEUE, passive=True)
            return True
        except pika.exceptions.AMQPError:
            return False

    eventually(serving)
    return index


def test_confirmed_messages_survive_kill_9_of_the_leader_and_unacked_come_back_redelivered(
    cluster: LocalCluster,
) -> None:
    index, epoch = declared_and_led(cluster)
    published = [f"m{i}".encode() for i in range(300)]
    with connect(cluster, index) as publisher:
        channel = confirming_channel(publisher)
        for i, body in enumerate(published):  # transient ones too: every message is persistent here
            channel.basic_publish("", QUEUE, body, PERSISTENT if i % 2 else TRANSIENT)
    consumer = connect(cluster, index)
    taken = consumer.channel()
    held = [taken.basic_get(QUEUE)[2] for _ in range(5)]  # delivered, never acked
    assert held == published[:5]
    cluster.kill_node(index)
    successor = new_leader(cluster, index, epoch)
    got: list[tuple[bytes, bool]] = []
    # The held ones may come a moment later: the new leader keeps what its log says was delivered for
    # the claims of consumers on other nodes (none here) until every live node has claimed.
    eventually(lambda: got.extend(drain(cluster, successor)) or len(got) >= len(published))
    assert sorted(body for body, _ in got) == sorted(published)  # every confirmed one, once
    assert [body for body, _ in got if body not in held] == published[5:]  # in order
    # A leader changes only when one failed: every message comes back flagged, those held unacked too.
    assert all(redelivered for _, redelivered in got)
    # Deleted and declared again on its leader's node: the same leader serves it, empty, and confirms.
    with connect(cluster, successor) as connection:
        channel = confirming_channel(connection)
        channel.queue_delete(QUEUE)
        channel.queue_declare(QUEUE, durable=True)
        channel.basic_publish("", QUEUE, b"again", PERSISTENT)
    assert drain(cluster, successor) == [(b"again", False)]
    try:
        consumer.close()
    except pika.exceptions.AMQPError:
        pass


def _publish_in_thread(
    cluster: LocalCluster, index: int, body: bytes, before: Callable[[], None] = lambda: None
) -> tuple[threading.Thread, list[str]]:
    """Publish one message with a confirm from a thread (after `before`, once connected); the list gets
    'ack', 'nack' or the error."""
    outcome: list[str] = []
    connection = connect(cluster, index)
    channel = confirming_channel(connection)
    before()

    def run() -> None:
        try:
            channel.basic_publish("", QUEUE, body, PERSISTENT)
            outcome.append("ack")
        except pika.exceptions.NackError:
            outcome.append("nack")
        except pika.exceptions.AMQPError as error:
            outcome.append(repr(error))
        finally:
            try:
                connection.close()
            except pika.exceptions.AMQPError:
                pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def test_a_leader_paused_past_its_lease_confirms_nothing(cluster: LocalCluster) -> None:
    index, epoch = declared_and_led(cluster)
    with connect(cluster, index) as publisher:
        confirming_channel(publisher).basic_publish("", QUEUE, b"before", PERSISTENT)
    process = cluster.nodes[index].process
    assert process is not None
    # Connected first; the publish reaches the node only once it is paused.
    thread, outcome = _publish_in_thread(
        cluster, index, b"while-paused", lambda: process.send_signal(signal.SIGSTOP)
    )
    try:
        successor = new_leader(cluster, index, epoch)
    finally:
        process.send_signal(signal.SIGCONT)
    thread.join(timeout=20)
    assert outcome, outcome
    drained = [body for body, _ in drain(cluster, successor)]
    if outcome[0] == "ack":
        # Handled once the node knew it was deposed, the publish went to the new leader (any-node access),
        # which confirmed it: it holds it. The stale leader's own queue confirmed nothing.
        assert drained == [b"before", b"while-paused"]
    else:  # nacked (or the connection closed): never confirmed, and not kept
        assert drained == [b"before"]


PAUSE = 1.5  # below peer_timeout (3 s): the stopped follower is not dropped for failing to answer


def test_a_stopped_follower_holds_back_no_confirm(cluster: LocalCluster) -> None:
    """Confirms need a majority of the replicas, the leader's own copy among them: while one follower is
    stopped (SIGSTOP) the leader and the other follower confirm each publish, well within the pause."""
    index, _ = declared_and_led(cluster)
    process = cluster.nodes[(index + 1) % 3].process
    assert process is not None
    waits: list[float] = []
    with connect(cluster, index) as connection:
        channel = confirming_channel(connection)
        for _ in range(3):
            process.send_signal(signal.SIGSTOP)
            try:
                resume = time.monotonic() + PAUSE
                while time.monotonic() < resume:
                    started = time.monotonic()
                    channel.basic_publish("", QUEUE, b"m%d" % len(waits), PERSISTENT)
                    waits.append(time.monotonic() - started)
            finally:
                process.send_signal(signal.SIGCONT)
            time.sleep(0.5)
    # Waiting for the stopped follower would make a publish at a pause's start wait for most of it.
    assert max(waits) < PAUSE / 2, sorted(waits)[-5:]
    assert [body for body, _ in drain(cluster, index)] == [b"m%d" % i for i in range(len(waits))]


def test_without_a_majority_nothing_is_confirmed_until_a_follower_returns(cluster: LocalCluster) -> None:
    index, _ = declared_and_led(cluster)
    followers = [i for i in range(3) if i != index]
    for i in followers:
        cluster.kill_node(i)
    eventually(lambda: len(in_sync(cluster)) == 1)
    thread, outcome = _publish_in_thread(cluster, index, b"held")
    thread.join(timeout=3)
    assert outcome == []  # held: no majority holds it
    cluster.start_node(cluster.nodes[followers[0]])
    cluster.wait_node(cluster.nodes[followers[0]])
    thread.join(timeout=20)
    assert outcome == ["ack"]
    assert len(in_sync(cluster)) == 2


def test_confirmed_messages_survive_a_restart_of_every_node(cluster: LocalCluster) -> None:
    """Every node stopped (and one killed) at once: each reads its replica file back, and the new leader
    serves everything that was confirmed."""
    index, _ = declared_and_led(cluster)
    published = [f"r{i}".encode() for i in range(100)]
    with connect(cluster, index) as publisher:
        channel = confirming_channel(publisher)
        for body in published:
            channel.basic_publish("", QUEUE, body, PERSISTENT)
    cluster.kill_node(index)
    for node in cluster.nodes:
        if node.process is not None and node.process.poll() is None:
            node.process.terminate()
            node.process.wait(timeout=10)
    for node in cluster.nodes:
        cluster.start_node(node)
    for node in cluster.nodes:
        cluster.wait_node(node)
    found = eventually(lambda: leader(cluster), timeout=20)
    got: list[bytes] = []

    def drained() -> bool:
        current = leader(cluster)
        if current is None:
            return False
        try:
            got.extend(body for body, _ in drain(cluster, current[0]))
        except pika.exceptions.AMQPError:
            return False
        return len(got) >= len(published)

    eventually(drained, timeout=20)
    assert got == published, found


@pytest.mark.parametrize("log_entries", [None, 50], ids=["from-the-tail", "from-a-snapshot"])
def test_a_follower_that_missed_messages_catches_up(tmp_path: Any, log_entries: int | None) -> None:
    """With 50 log entries kept, the 500 messages it missed are past the leader's log: a snapshot."""
    for cluster in start_cluster(tmp_path, replica_log_entries=log_entries):
        _follower_catches_up(cluster, snapshot=log_entries is not None)


def _follower_catches_up(cluster: LocalCluster, snapshot: bool) -> None:
    index, epoch = declared_and_led(cluster)
    follower = next(i for i in range(3) if i != index)
    other = 3 - index - follower
    cluster.kill_node(follower)
    published = [f"n{i}".encode() for i in range(500)]
    with connect(cluster, index) as publisher:
        channel = confirming_channel(publisher)
        for body in published:
            channel.basic_publish("", QUEUE, body, PERSISTENT)
    # Confirms no longer wait for it (a majority holds them), so the leader may drop it a moment later.
    eventually(lambda: cluster.nodes[follower].name not in in_sync(cluster))
    cluster.start_node(cluster.nodes[follower])
    cluster.wait_node(cluster.nodes[follower])
    eventually(lambda: len(in_sync(cluster)) == 3)
    sent = f"sent {cluster.nodes[follower].name} a snapshot" in cluster.nodes[index].log_path.read_text()
    assert sent == snapshot
    # The returned follower and a replica that lost its disk are left: the follower's log is the newest of
    # that majority, so it leads, and holds everything.
    cluster.kill_node(other)
    cluster.kill_node(index)
    shutil.rmtree(cluster.directory / cluster.nodes[other].name)
    cluster.start_node(cluster.nodes[other])
    successor = new_leader(cluster, index, epoch)
    assert successor == follower
    assert [body for body, _ in drain(cluster, successor)] == published


@pytest.mark.slow
def test_leader_kill_loop_under_confirmed_load_loses_no_confirmed_message(cluster: LocalCluster) -> None:
    """Kill -9 the leader 8 times under a confirming publisher that follows the leader; restart each
    victim and let it catch up. Every confirmed message is there at the end; nothing never published."""
    declared_and_led(cluster)
    confirmed: list[bytes] = []
    confirm_times: list[float] = []
    attempted = [0]
    stop = threading.Event()

    def publish() -> None:
        while not stop.is_set():
            found = leader(cluster)
            if found is None:
                time.sleep(0.05)
                continue
            try:
                with connect(cluster, found[0]) as connection:
                    channel = confirming_channel(connection)
                    while not stop.is_set():
                        body = b"p%d" % attempted[0]
                        attempted[0] += 1
                        channel.basic_publish("", QUEUE, body, PERSISTENT)
                        confirmed.append(body)
                        confirm_times.append(time.monotonic())
            except (pika.exceptions.AMQPError, OSError):
                time.sleep(0.05)

    thread = threading.Thread(target=publish, daemon=True)
    thread.start()
    kills = 0
    gaps: list[float] = []  # kill -9 to the first confirm after it (from the new leader)
    try:
        for _ in range(8):
            before = len(confirmed)
            eventually(lambda: len(confirmed) >= before + 50, timeout=30)  # noqa: B023
            found = eventually(lambda: leader(cluster))
            cluster.kill_node(found[0])
            killed = time.monotonic()
            kills += 1
            new_leader(cluster, found[0], found[1])
            seen = len(confirm_times)
            eventually(lambda: len(confirm_times) > seen, timeout=30)  # noqa: B023
            gaps.append(next(t for t in confirm_times if t > killed) - killed)
            cluster.start_node(cluster.nodes[found[0]])
            cluster.wait_node(cluster.nodes[found[0]])
            eventually(lambda: len(in_sync(cluster)) == 3, timeout=30)
    finally:
        stop.set()
        thread.join(timeout=30)
    index = eventually(lambda: leader(cluster))[0]
    got = [body for body, _ in drain(cluster, index)]
    lost = set(confirmed) - set(got)
    phantom = {body for body in got if int(body[1:]) >= attempted[0]}
    duplicates = len(got) - len(set(got))
    median = sorted(gaps)[len(gaps) // 2]
    print(f"faults {kills} / confirmed {len(confirmed)} / lost {len(lost)} / phantom {len(phantom)} / "
          f"duplicates {duplicates}; failover (kill to next confirm) median {median:.2f} s, "
          f"max {max(gaps):.2f} s")
    assert not lost and not phantom
