"""One large message through each broker: how much memory does the round trip cost, per byte of body?

    python -m bench.large_message                      # 100 MB, every case, 1 repeat
    python -m bench.large_message --size 50MB --repeat 3
    python -m bench.large_message --cases transient

Each run starts a fresh broker (Leveret, then RabbitMQ, alternating which goes first), publishes one message
with pika and publisher confirms, waits until the queue holds it, consumes it with a manual ack and checks
the body. The figure is the broker's peak resident memory over the round trip (VmHWM, reset through
/proc/PID/clear_refs just before the publish) minus its resident memory just before, divided by the body
size: 1.0 means the broker held the body once at its peak.

Cases: `transient` (delivery mode 1, a classic non-durable queue), `persistent` (delivery mode 2, a durable
queue), `paged` and `paged-persistent` (the same two, with the message left in the queue for 3 s before it is
consumed; Leveret runs with `message_memory_budget: 8MiB`, so its pager takes the body out of memory (into a
page file, or leaving it in the queue's log) and reads it back, which the run checks; RabbitMQ gets
`x-queue-mode: lazy`, its classic queues' way of keeping messages on disk).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pika

from interop.backlog import BudgetedLeveret, vm_rss
from interop.brokers import Broker, RabbitMQBroker, rabbitmq_server_script
from leveret.config.sizes import parse_size

CASES = ("transient", "persistent", "paged", "paged-persistent")
SETTLE_SECONDS = 2.0  # after start, so the idle figure is not taken while the broker is still booting
PAGED_WAIT = 3.0  # how long the message sits in the queue in the paged cases (Leveret's pager: every 0.1 s)
MB = 1_000_000


def peak_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise ValueError(f"no VmHWM for {pid}")


def reset_peak_rss(pid: int) -> None:
    """VmHWM starts again from the current RSS (proc(5), clear_refs value 5)."""
    with open(f"/proc/{pid}/clear_refs", "w") as file:
        file.write("5")


@dataclass
class Run:
    broker: str
    case: str
    size: int
    idle_rss: int
    peak_rss: int
    queued_rss: int
    seconds: float

    @property
    def per_body(self) -> float:
        """Peak growth over the round trip, in bodies."""
        return (self.peak_rss - self.idle_rss) / self.size

    @property
    def queued_per_body(self) -> float:
        """Growth with the message queued, in bodies."""
        return (self.queued_rss - self.idle_rss) / self.size


def round_trip(broker: Broker, case: str, body: bytes) -> tuple[float, int]:
    """Publish `body` once, confirmed, then consume and ack it: the seconds it took, and the broker's RSS
    with the message queued (in the paged cases, at the end of the wait)."""
    persistent = case.endswith("persistent")
    paged = case.startswith("paged")
    arguments = {"x-queue-mode": "lazy"} if paged and broker.kind == "rabbitmq" else None
    started = time.perf_counter()
    connection = pika.BlockingConnection(pika.URLParameters(broker.url + "?heartbeat=0"))
    try:
        channel = connection.channel()
        channel.queue_declare("large", durable=persistent, arguments=arguments)
        channel.confirm_delivery()
        properties = pika.BasicProperties(delivery_mode=2 if persistent else 1)
        channel.basic_publish("", "large", body, properties)
        queued_rss = vm_rss(broker.pid)
        if paged:
            connection.sleep(PAGED_WAIT)
            queued_rss = vm_rss(broker.pid)
        for method, _properties, received in channel.consume("large", inactivity_timeout=120):
            if method is None:
                raise RuntimeError(f"{broker.kind}: no delivery within 120 s")
            if received != body:
                raise RuntimeError(f"{broker.kind}: the body came back changed ({len(received)} bytes)")
            channel.basic_ack(method.delivery_tag)
            break
        channel.cancel()
        channel.queue_delete("large")
    finally:
        connection.close()
    return time.perf_counter() - started, queued_rss


def one_run(make: Callable[[Path, str], Broker], case: str, body: bytes) -> Run:
    with tempfile.TemporaryDirectory(prefix="leveret-large-") as workdir:
        broker = make(Path(workdir), case)
        broker.start()
        try:
            time.sleep(SETTLE_SECONDS)
            pid = broker.pid
            idle = vm_rss(pid)
            reset_peak_rss(pid)
            seconds, queued = round_trip(broker, case, body)
            run = Run(broker.kind, case, len(body), idle, peak_rss(pid), queued, seconds)
            if case.startswith("paged") and broker.kind == "leveret" and run.queued_per_body > 0.5:
                held = run.queued_per_body
                raise RuntimeError(f"leveret held the body in memory while it was paged ({held:.2f})")
            return run
        finally:
            broker.close()


def leveret(workdir: Path, case: str) -> Broker:
    return BudgetedLeveret(workdir, "8MiB" if case.startswith("paged") else None)


def rabbitmq(workdir: Path, case: str) -> Broker:
    script = rabbitmq_server_script()
    assert script is not None
    return RabbitMQBroker(workdir, script)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", default="100MB", help="body size (default 100MB)")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--cases", default=",".join(CASES))
    args = parser.parse_args()
    size = parse_size(args.size)
    cases = args.cases.split(",")
    body = os.urandom(size)
    brokers: list[tuple[str, Callable[[Path, str], Broker]]] = [("leveret", leveret)]
    if rabbitmq_server_script() is not None:
        brokers.append(("rabbitmq", rabbitmq))
    else:
        print("rabbitmq-server is not installed: Leveret alone, no ratio")
    print(f"one message of {size:,} bytes; nproc {os.cpu_count()}\n")
    print(
        "| case | broker | idle RSS MB | peak RSS MB | peak growth / body | queued growth / body "
        "| round trip s |"
    )
    print("|---|---|---|---|---|---|---|")
    runs: list[Run] = []
    for repeat in range(args.repeat):
        for case in cases:
            order = brokers if repeat % 2 == 0 else brokers[::-1]
            for _name, make in order:
                run = one_run(make, case, body)
                runs.append(run)
                print(
                    f"| {case} | {run.broker} | {run.idle_rss / MB:.0f} | {run.peak_rss / MB:.0f} "
                    f"| {run.per_body:.2f} | {run.queued_per_body:.2f} | {run.seconds:.1f} |",
                    flush=True,
                )
    if len(brokers) < 2:
        return
    print("\n| case | Leveret growth / body | RabbitMQ growth / body | Leveret/RabbitMQ ↓ |")
    print("|---|---|---|---|")
    for case in cases:
        mine = statistics.median(r.per_body for r in runs if r.case == case and r.broker == "leveret")
        theirs = statistics.median(r.per_body for r in runs if r.case == case and r.broker == "rabbitmq")
        print(f"| {case} | {mine:.2f} | {theirs:.2f} | {mine / theirs:.2f} |")


if __name__ == "__main__":
    main()
