"""Hostile bytes over raw sockets against a broker process: no 541 INTERNAL_ERROR, ever.

Hypothesis draws batches of mutated real-client sessions (tests/wirefuzz/cases.py); each batch runs as
that many concurrent connections (tests/wirefuzz/runner.py). For every connection: no 541 on the
connection or any channel; a connection whose framing is invalid is closed; a connection left open
still answers a channel.open sent after everything else. After the run the broker is still up, logged
no traceback, and serves a well-behaved pika client. The slow version sends at least a million frames
(`python -m pytest -m slow -s tests/test_hostile_wire.py` prints the figures).
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from interop.brokers import LeveretBroker
from tests.wirefuzz.cases import Case, cases, channel_open, frame_level_error, method_frame
from tests.wirefuzz.runner import Outcome, Tally, run_cases

SLOW_FRAMES = int(os.environ.get("LEVERET_WIRE_FUZZ_FRAMES", 1_000_000))


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LeveretBroker]:
    instance = LeveretBroker(tmp_path_factory.mktemp("wire-fuzz"))
    instance.start()
    try:
        yield instance
    finally:
        instance.close()


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def check(outcome: Outcome) -> None:
    case = outcome.case
    where = f"{case.session} {case.handshake} {case.mutations}: {outcome.signature()}\n{case.payload().hex()}"
    assert outcome.code != 541 and all(code != 541 for _, code, _, _ in outcome.channel_closes), where
    # A close-ok to the client's own connection.close ends the connection too (RabbitMQ then leaves the
    # socket for the client to close).
    closed = outcome.connection_close is not None or outcome.close_ok or outcome.end != "open"
    if case.handshake == "full" and outcome.handshake_done and frame_level_error(case.payload()):
        assert closed, where
    if outcome.probe_sent and not closed:
        assert outcome.probe_answered, where


def fuzz(broker: LeveretBroker, batches: int, size: int, tally: Tally) -> None:
    """`batches` hypothesis examples, each `size` connections at once."""
    # No shrinking: each attempt is a batch of real connections, and the failure message holds the bytes.
    @settings(
        max_examples=batches,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        phases=(Phase.explicit, Phase.reuse, Phase.generate),
    )
    @given(st.lists(cases(), min_size=size, max_size=size))
    def batch(sample: list[Case]) -> None:
        outcomes = run_cases(broker.host, broker.port, sample, concurrency=size, quiet=0.5)
        assert broker.running, broker.diagnostics()
        tally.add(outcomes)
        for outcome in outcomes:
            check(outcome)

    batch()


def assert_still_serving(broker: LeveretBroker) -> None:
    assert broker.running
    log = broker.stderr_path.read_text(errors="replace")
    at = log.find("Traceback")
    assert at < 0, log[max(0, at - 600) : at + 4000]
    connection = pika.BlockingConnection(pika.URLParameters(broker.url))
    try:
        channel = connection.channel()
        queue = channel.queue_declare("", exclusive=True).method.queue
        channel.basic_publish("", queue, b"still here")
        method, _, body = channel.basic_get(queue, auto_ack=True)
        assert method is not None and body == b"still here"
    finally:
        connection.close()


def test_hostile_connections_never_get_541(broker: LeveretBroker) -> None:
    tally = Tally()
    fuzz(broker, batches=6, size=64, tally=tally)
    print(tally.report())
    assert tally.internal_errors == 0
    assert_still_serving(broker)


@pytest.mark.slow
def test_a_million_hostile_frames_never_get_541(broker: LeveretBroker) -> None:
    tally = Tally()
    rss_before = rss_bytes(broker.pid)
    while tally.frames < SLOW_FRAMES:
        fuzz(broker, batches=20, size=250, tally=tally)
        print(f"{tally.frames} frames, {tally.connections} connections", flush=True)
    rss_after = rss_bytes(broker.pid)
    print(tally.report())
    print(f"broker RSS: {rss_before / 2**20:.1f} MiB before, {rss_after / 2**20:.1f} MiB after")
    assert tally.internal_errors == 0
    assert_still_serving(broker)


def test_a_durable_exchange_with_a_non_utf8_argument_is_stored(broker: LeveretBroker) -> None:
    """Found by the fuzzer: pamqp reads such a long string as bytes, which the definitions snapshot could
    not encode, and the failed group commit stopped the broker."""
    table = b"\x01kS" + struct.pack(">I", 2) + b"\xff\xfe"
    arguments = b"\x00\x00\x09fuzz.utf8\x06fanout\x02" + struct.pack(">I", len(table)) + table
    declare = method_frame(1, 40, 10, arguments)  # exchange.declare, durable
    [outcome] = run_cases(broker.host, broker.port, [Case("pika", "full", [channel_open(1), declare])])
    assert outcome.probe_answered, outcome.signature()
    time.sleep(0.5)  # a group commit or two
    broker.restart()
    connection = pika.BlockingConnection(pika.URLParameters(broker.url))
    try:
        connection.channel().exchange_declare("fuzz.utf8", passive=True)
    finally:
        connection.close()
