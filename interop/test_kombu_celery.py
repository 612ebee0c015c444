"""kombu and Celery, each run as a subprocess outside the repository (see clients.client_env)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from interop.brokers import Broker
from interop.clients import client_env, client_process, python_client, run_client, stage, unique


def test_kombu_producer_consumer_round_trip(broker: Broker, tmp_path: Path) -> None:
    stage(tmp_path, "kombu_roundtrip.py")
    args = python_client("kombu_roundtrip.py", unique("kombu-x"), unique("kombu-q"))
    result = json.loads(run_client(args, tmp_path, client_env(broker.url)))
    assert [m["body"] for m in result["consumer"]] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert [m["headers"]["attempt"] for m in result["consumer"]] == [0, 1, 2]
    assert {m["content_type"] for m in result["consumer"]} == {"application/json"}
    assert result["simple"] == {"hello": "kombu"}


def test_celery_task_round_trip(broker: Broker, tmp_path: Path) -> None:
    stage(tmp_path, "tasks.py", "celery_client.py")
    queue = unique("celery")
    env = client_env(broker.url, CELERY_QUEUE=queue)
    worker_args = python_client(
        "-m",
        "celery",
        "-A",
        "tasks",
        "worker",
        "--pool=solo",
        "-c",
        "1",
        "--loglevel=INFO",
        "-n",
        f"{queue}@%h",
    )
    with client_process(worker_args, tmp_path, env) as worker:
        worker.expect(lambda line: "ready." in line, timeout=60)
        assert run_client(python_client("celery_client.py"), tmp_path, env) == "5\n"
        worker.expect(lambda line: "succeeded" in line and ": 5" in line)
        worker.signal(signal.SIGTERM)  # warm shutdown
        assert worker.wait() == 0, worker.transcript()


def test_kombu_hub_consumer_acks_from_other_threads(broker: Broker, tmp_path: Path) -> None:
    stage(tmp_path, "kombu_event_loop.py")
    args = python_client("kombu_event_loop.py", "thread-ack", unique("kombu-thread-ack"))
    result = json.loads(run_client(args, tmp_path, client_env(broker.url)))
    assert result["received"] == list(range(20))  # past the prefetch of 5: the acks reached the broker
    assert result["acked"] == list(range(20))
    assert (result["ready"], result["consumers"], result["leftover"]) == (0, 0, False)


def test_kombu_revived_consumer_resumes_only_its_active_queue(broker: Broker, tmp_path: Path) -> None:
    stage(tmp_path, "kombu_event_loop.py")
    args = python_client("kombu_event_loop.py", "revive", unique("kombu-active"), unique("kombu-inactive"))
    result = json.loads(run_client(args, tmp_path, client_env(broker.url)))
    assert result == {
        "inactive_consumed_before": False,
        "active_consumed": True,
        "inactive_consumed": False,
        "inactive_consumers": 0,
        "received": [{"hello": "world"}],
    }
