"""The cluster benches' load generator options (bench/loadgen.c) against real Leveret brokers: a producer that
fails over to the next address when its broker is killed, with its confirm gaps timed, and producers
publishing random routing keys through an x-consistent-hash exchange, or only the keys they are given. A
smoke test of the harness that bench.replicated and bench.cluster_scaling build on; the benches themselves
stay out of the test run."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest

from bench.toolchain import LIBRABBITMQ_HEADERS, ToolchainError, build_loadgen
from interop.brokers import LeveretBroker


@pytest.fixture(scope="module")
def loadgen() -> Path:
    if not any(header.exists() for header in LIBRABBITMQ_HEADERS):
        pytest.skip("librabbitmq-dev is not installed")
    try:
        return build_loadgen()
    except ToolchainError as exc:
        pytest.skip(str(exc))


@pytest.fixture
def brokers(tmp_path: Path) -> Iterator[list[LeveretBroker]]:
    started = [LeveretBroker(tmp_path / f"broker{i}") for i in range(2)]
    try:
        for broker in started:
            broker.start()
        yield started
    finally:
        for broker in started:
            broker.close()


def channel(broker: LeveretBroker) -> pika.adapters.blocking_connection.BlockingChannel:
    return pika.BlockingConnection(pika.URLParameters(broker.url)).channel()


def message_count(broker: LeveretBroker, queue: str) -> int:
    on = channel(broker)
    try:
        return int(on.queue_declare(queue, passive=True).method.message_count)
    finally:
        on.connection.close()


def test_a_producer_fails_over_to_the_next_address_and_times_the_gap(
    loadgen: Path, brokers: list[LeveretBroker]
) -> None:
    first, second = brokers
    for broker in brokers:
        declared = channel(broker)
        declared.queue_declare("failover", durable=True)
        declared.connection.close()
    addresses = f"127.0.0.1:{first.port},127.0.0.1:{second.port}"
    command = [str(loadgen), "--hosts", addresses, "--mode", "produce", "--no-declare", "--queue", "failover",
               "--persistent", "--confirm", "100", "--rate", "500", "--duration", "2.5"]
    killed: list[int] = []

    def kill_first() -> None:
        killed.append(time.monotonic_ns())
        first.kill()

    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        assert proc.stderr is not None and proc.stdout is not None
        assert proc.stderr.readline().strip() == "go"
        threading.Timer(1.0, kill_first).start()
        out, _ = proc.communicate(timeout=30)
    result = json.loads(out)
    assert result["errors"] == [] and result["reconnects"] == 1 and len(result["failovers"]) == 1
    assert result["last_confirm_ns"] > killed[0]  # confirms came again, from the second broker
    around = [gap for gap in result["confirm_gaps_ns"] if gap[0] <= killed[0] <= gap[1]]
    assert len(around) <= 1 and all(end - start < 2e9 for start, end in around)
    assert message_count(second, "failover") > 0
    latency = result["confirm_latency_us"]
    assert latency["samples"] == result["confirmed"] and 0 < latency["p50"] <= latency["max"]
    # Each message is confirmed once, by the first broker or the second, or was in flight on the dead
    # connection (abandoned) or at the deadline (at most the window).
    settled = result["confirmed"] + result["nacked"] + result["abandoned"]
    assert 0 <= result["published"] - settled <= 100


def run(loadgen: Path, *args: str) -> dict[str, object]:
    done = subprocess.run([str(loadgen), *args], capture_output=True, text=True, timeout=30)
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_keys_publishes_only_the_keys_given(loadgen: Path, brokers: list[LeveretBroker]) -> None:
    # What bench.cluster_scaling's consistent-hash-aware producers use: each publish takes one of the keys.
    broker = brokers[0]
    declared = channel(broker)
    declared.exchange_declare("keyed", exchange_type="direct")
    for key in ("a", "b", "c"):
        declared.queue_declare(f"keyed-{key}")
        declared.queue_bind(f"keyed-{key}", "keyed", routing_key=key)
    declared.connection.close()
    published = run(loadgen, "--port", str(broker.port), "--no-declare", "--duration", "10", "--count",
                    "2000", "--mode", "produce", "--exchange", "keyed", "--keys", "a,b", "--confirm", "100")
    assert published["errors"] == [] and published["confirmed"] == 2000
    shares = [message_count(broker, f"keyed-{key}") for key in ("a", "b", "c")]
    assert sum(shares) == 2000 and min(shares[:2]) > 700 and shares[2] == 0


def test_random_keys_spread_over_a_consistent_hash_exchange(
    loadgen: Path, brokers: list[LeveretBroker]
) -> None:
    broker = brokers[0]
    queues = [f"hashed-{i}" for i in range(3)]
    declared = channel(broker)
    declared.exchange_declare("hashing", exchange_type="x-consistent-hash")
    for queue in queues:
        declared.queue_declare(queue)
        declared.queue_bind(queue, "hashing", routing_key="1")
    declared.connection.close()
    port = ["--port", str(broker.port), "--no-declare", "--duration", "10", "--count", "3000"]
    published = run(loadgen, *port, "--mode", "produce", "--exchange", "hashing", "--random-keys",
                    "--producers", "2", "--confirm", "100")
    assert published["errors"] == [] and published["confirmed"] == 3000
    assert published["queued"] is None and published["connections"] == 2  # no set-up connection
    shares = [message_count(broker, queue) for queue in queues]
    assert sum(shares) == 3000 and min(shares) > 500
    consumed = run(loadgen, *port, "--mode", "consume", "--consumers", "3",
                   "--consume-queues", ",".join(queues))
    assert consumed["errors"] == [] and consumed["delivered"] == 3000
