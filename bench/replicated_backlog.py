"""A replicated backlog larger than memory: the resident memory of every node of a 3-node cluster while a
backlog of persistent messages is published with confirms into one replicated queue (nobody consumes),
with it all queued, and on the new leader after kill -9 of the leader. Leveret (3 nodes, 3 etcd members,
`resources.message_memory_budget` set) against RabbitMQ 3.10 quorum queues (3 nodes), in the same run.

    python -m bench.replicated_backlog                         # 500,000 x 1 KiB, Leveret budget 64MiB
    python -m bench.replicated_backlog --count 100000 --body 4096 --budget 16MiB

Publishing is the C load generator (bench/loadgen.c): one producer on the leader's node, 1000 confirms in
flight, persistent messages. RSS is /proc/PID/status VmRSS of each node's process (beam.smp for
RabbitMQ): before, its peak while publishing (sampled every 50 ms), 12 s after the last confirm (the
backlog queued; Leveret returns freed memory to the system every 10 s), and the new leader's 5 s after
it serves the queue again (with the confirmed count it then holds).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pika
import pika.exceptions

from bench import loadgen
from bench.clusters import BenchCluster, LeveretBenchCluster, new_cluster
from bench.toolchain import prepare
from interop.backlog import MIB, PeakRss, vm_rss

SIZE = 3
QUEUE = "backlog"
SETTLE = 12.0
AFTER_ELECTION = 5.0


@dataclass
class Run:
    kind: str
    leader: int
    idle: list[int]
    peak: list[int]
    queued: list[int]
    publish_seconds: float
    confirmed: int
    new_leader: int
    new_leader_rss: int
    held_after: int  # messages the new leader holds


def message_count(cluster: BenchCluster, index: int) -> int | None:
    try:
        with pika.BlockingConnection(pika.URLParameters(cluster.url(index))) as connection:
            declared = connection.channel().queue_declare(QUEUE, durable=True, passive=True)
            return int(declared.method.message_count)
    except pika.exceptions.AMQPError:
        return None


def one_run(cluster: BenchCluster, binary: Path, count: int, body: int) -> Run:
    cluster.declare([QUEUE], on=[0])
    leader = cluster.leader_of(QUEUE)
    pids = cluster.pids()
    idle = [vm_rss(pid) for pid in pids]
    watchers = [PeakRss(pid, 0.05) for pid in pids]
    for watcher in watchers:
        watcher.start()
    started = time.perf_counter()
    limit = max(600.0, count / 200)  # the run ends at the last confirm; this only bounds it
    args = ["--mode", "produce", "--count", str(count), "--duration", str(limit), "--confirm", "1000",
            "--persistent", "--body", str(body), "--queue", QUEUE, "--no-declare"]
    result = loadgen.run(binary, cluster.port(leader), args, seconds=limit)
    seconds = time.perf_counter() - started
    peak = [watcher.stop() for watcher in watchers]
    time.sleep(SETTLE)
    queued = [vm_rss(pid) for pid in pids]
    cluster.kill(leader)
    successor = cluster.leader_of(QUEUE, other_than=leader)
    deadline = time.monotonic() + 60
    while (held := message_count(cluster, successor)) is None and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(AFTER_ELECTION)
    after = vm_rss(pids[successor])
    held = message_count(cluster, successor) or 0
    return Run(cluster.kind, leader, idle, peak, queued, seconds, int(result.get("confirmed", 0)),
               successor, after, held)


def report(runs: list[Run], count: int, body: int, budget: str) -> str:
    lines = [
        f"{count:,} x {body} B persistent, confirmed, into one replicated queue (Leveret budget {budget}); "
        f"load average {os.getloadavg()[0]:.2f} at the end. RSS in MiB.",
        "",
        "| broker | node | role | idle | peak publishing | backlog queued | growth queued |",
        "|---|---|---|--:|--:|--:|--:|",
    ]
    for run in runs:
        for index in range(SIZE):
            role = "leader" if index == run.leader else "follower"
            idle, peak, queued = (run.idle[index] / MIB, run.peak[index] / MIB, run.queued[index] / MIB)
            lines.append(f"| {run.kind} | {index + 1} | {role} | {idle:.0f} | {peak:.0f} | {queued:.0f} "
                         f"| {queued - idle:.0f} |")
    lines += ["", "| broker | published/s | confirmed | new leader RSS after kill -9 | its growth "
              "| messages it holds |", "|---|--:|--:|--:|--:|--:|"]
    for run in runs:
        lines.append(
            f"| {run.kind} | {run.confirmed / run.publish_seconds:,.0f} | {run.confirmed:,} "
            f"| {run.new_leader_rss / MIB:.0f} | {(run.new_leader_rss - run.idle[run.new_leader]) / MIB:.0f} "
            f"| {run.held_after:,} |")
    by_kind = {run.kind: run for run in runs}
    if {"leveret", "rabbitmq"} <= by_kind.keys():
        leveret, rabbit = by_kind["leveret"], by_kind["rabbitmq"]
        ratio = max(leveret.queued) / max(rabbit.queued)
        lines += ["", f"Largest node RSS with the backlog queued, Leveret/RabbitMQ: {ratio:.2f}"]
    return "\n".join(lines)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.replicated_backlog", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=500_000)
    parser.add_argument("--body", type=int, default=1024, help="body bytes")
    parser.add_argument("--budget", default="64MiB",
                        help="Leveret's resources.message_memory_budget ('default': its default)")
    parser.add_argument("--leveret-only", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse(argv)
    tools = prepare("bench.replicated_backlog", rabbitmq=not args.leveret_only)
    if tools is None:
        return 2
    runs = []
    for kind in tools.kinds:
        with tempfile.TemporaryDirectory(prefix=f"leveret-bench-backlog-{kind}-") as root:
            cluster = new_cluster(kind, Path(root), SIZE)
            if isinstance(cluster, LeveretBenchCluster) and args.budget != "default":
                cluster.cluster.memory_budget = args.budget
            print(f"== {kind}: {SIZE} nodes, {args.count:,} x {args.body} B", file=sys.stderr, flush=True)
            cluster.start()
            try:
                runs.append(one_run(cluster, tools.loadgen, args.count, args.body))
            finally:
                cluster.stop()
    print(report(runs, args.count, args.body, args.budget))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
