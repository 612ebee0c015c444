"""Replicated confirmed publishing on 3 nodes: Leveret (3 nodes, 3 etcd members) against RabbitMQ 3.10 quorum
queues (3 nodes), both on this machine, alternated in the same run, reported as Leveret/RabbitMQ ratios.

    python -m bench.replicated                  # 3 repeats, 10 s runs (~10 min with the clusters' start)
    python -m bench.replicated --quick          # 1 repeat, 4 s runs
    python -m bench.replicated --cases 1,3 --repeat 5

Cases (persistent 256-byte messages, one durable quorum queue per run, 3 replicas, declared through node 1):
1. throughput: 1 producer with 1000 confirms in flight and 1 consumer, both on the queue's leader's node;
2. latency: the same at a steady 1000 msg/s: publish-to-confirm p50/p99/p99.9 (first second dropped);
3. failover, client on the leader's node: 1000 msg/s with confirms; kill -9 of the leader's node after 3 s;
   the producer reconnects to the next node and goes on. Failover = from the last confirm before the kill
   to the first after it. Then the confirmed messages are counted in the queue at its new leader;
4. failover, client on a follower's node: the same, the connection survives the kill (measured on Leveret
   only where a publish on a follower reaches the leader: any-node access);
5. latency with a slow follower: case 2 with every thread of one follower's node at nice 10 (about a tenth
   of a nice-0 process's share of a busy CPU) for the run: slow, but answering.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pika
import pika.exceptions

from bench.cluster_runs import ClusterCase, Settings, Window, hosts, report, run_case, run_window, sample
from bench.clusters import BenchCluster, new_cluster
from bench.report import environment
from bench.runner import Measurement
from bench.scenarios import CONSUMING, Metric, Sample
from bench.toolchain import prepare

SIZE = 3
CONFIRM_WINDOW = 1000
RATE = 1000
KILL_AFTER = 3.0
# After the kill, confirms have this long to come back before the run ends (RabbitMQ's election and a
# Leveret lease expiry both take seconds).
FAILOVER_ROOM = 12.0
# A wait between confirms shorter than this is not listed by the load generator (GAP_LISTED_NSEC).
GAP_FLOOR = 0.005
SLOW_NICE = 10  # case 5's follower


def throughput(cluster: BenchCluster, settings: Settings) -> Sample:
    queue = settings.name("repl-throughput")
    cluster.declare([queue], on=[0])
    leader = cluster.leader_of(queue)
    args = [*CONSUMING, "--mode", "both", "--persistent", "--confirm", str(CONFIRM_WINDOW),
            "--duration", str(settings.duration), "--queue", queue, "--no-declare",
            "--hosts", hosts(cluster, [leader])]
    try:
        window = run_window(cluster, settings, args, settings.duration)
    finally:
        cluster.delete([queue])
    elapsed = max(window.result["elapsed"], 1e-9)
    rates = {"confirmed/s": window.result["confirmed"] / elapsed,
             "delivered/s": window.result["delivered"] / elapsed}
    return sample(window, rates, window.result["delivered"])


def set_nice(pid: int, nice: int) -> None:
    """Every thread of the process at `nice` (a process's nice value is per thread on Linux)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError):
            os.setpriority(os.PRIO_PROCESS, int(task.name), nice)


def latency(cluster: BenchCluster, settings: Settings) -> Sample:
    return confirm_latency(cluster, settings, slow_follower=False)


def slow_follower_latency(cluster: BenchCluster, settings: Settings) -> Sample:
    return confirm_latency(cluster, settings, slow_follower=True)


def confirm_latency(cluster: BenchCluster, settings: Settings, *, slow_follower: bool) -> Sample:
    queue = settings.name("repl-latency")
    cluster.declare([queue], on=[0])
    leader = cluster.leader_of(queue)
    args = [*CONSUMING, "--mode", "both", "--persistent", "--confirm", str(CONFIRM_WINDOW),
            "--rate", str(RATE), "--warmup", str(settings.warmup), "--duration", str(settings.duration),
            "--queue", queue, "--no-declare", "--hosts", hosts(cluster, [leader])]
    slowed = cluster.pid(next(i for i in range(cluster.size) if i != leader)) if slow_follower else None
    try:
        if slowed is not None:
            set_nice(slowed, SLOW_NICE)
        window = run_window(cluster, settings, args, settings.duration)
    finally:
        if slowed is not None:
            set_nice(slowed, 0)
        cluster.delete([queue])
    confirm = window.result["confirm_latency_us"]
    metrics = {} if confirm is None else {
        "confirm p50 ms": confirm["p50"] / 1000, "confirm p99 ms": confirm["p99"] / 1000,
        "confirm p99.9 ms": confirm["p999"] / 1000,
    }
    delivery = window.result["latency_us"]
    if delivery is not None:
        metrics["delivery p99 ms"] = delivery["p99"] / 1000
    result = sample(window, metrics, window.result["delivered"])
    expected = RATE * (settings.duration - settings.warmup)
    received = confirm["samples"] if confirm else 0
    if received < 0.9 * expected:
        result.errors.append(f"only {received} of ~{expected:.0f} confirms after the warm-up")
    return result


def gap_around(window: Window, instant_ns: int) -> float | None:
    """Seconds confirms stopped for around `instant_ns` (the kill): the longest wait between two confirms
    that ends after it and begins at most a second before it (confirms sent before the kill may still be
    read after it, from the socket); GAP_FLOOR if no wait was that long; None if no confirm came after it."""
    waits = [end - start for start, end in window.result["confirm_gaps_ns"]
             if end > instant_ns and start >= instant_ns - 1_000_000_000]
    if waits:
        return max(waits) / 1e9
    return GAP_FLOOR if window.result["last_confirm_ns"] > instant_ns else None


def count_at(cluster: BenchCluster, index: int, queue: str) -> int:
    """Messages in the queue as the given node answers a passive declare."""
    with pika.BlockingConnection(pika.URLParameters(cluster.url(index))) as connection:
        ok = connection.channel().queue_declare(queue, passive=True)
        return int(ok.method.message_count)


def failover(client_on_leader: bool) -> Callable[[BenchCluster, Settings], Sample]:
    def measure(cluster: BenchCluster, settings: Settings) -> Sample:
        queue = settings.name("repl-failover")
        cluster.declare([queue], on=[0])
        leader = cluster.leader_of(queue)
        others = [index for index in range(cluster.size) if index != leader]
        if not client_on_leader and not any_node_publish(cluster):
            cluster.delete([queue])
            return Sample({}, 0, 0.0, 0.0, 0.0, 0, [], {}, [NO_ANY_NODE])
        route = [leader, *others] if client_on_leader else others
        seconds = KILL_AFTER + FAILOVER_ROOM
        args = ["--mode", "produce", "--body", "256", "--persistent", "--confirm", str(CONFIRM_WINDOW),
                "--rate", str(RATE), "--duration", str(seconds), "--queue", queue, "--no-declare",
                "--hosts", hosts(cluster, route), "--nack-reconnect"]
        killed: list[int] = []

        def kill() -> None:
            killed.append(time.monotonic_ns())
            cluster.kill(leader)

        timer: list[threading.Timer] = []

        def on_go() -> None:
            timer.append(threading.Timer(KILL_AFTER, kill))
            timer[0].start()

        try:
            window = run_window(cluster, settings, args, seconds, on_go)
            timer[0].join()
            new_leader = cluster.leader_of(queue, other_than=leader)
            stored = count_at(cluster, new_leader, queue)
        finally:
            for started in timer:
                started.cancel()
            if cluster.pid(leader) is None:
                cluster.restart(leader)
        cluster.delete([queue])
        result = window.result
        gap = gap_around(window, killed[0])
        metrics = {} if gap is None else {"failover s": gap}
        confirmed = result["confirmed"]
        metrics["confirmed lost"] = max(confirmed - stored, 0)
        out = sample(window, metrics, 0)
        if gap is None:
            out.errors.append(f"no confirm came in the {FAILOVER_ROOM:.0f} s after the kill")
        out.notes.append(
            f"kill -9 of {cluster.node_name(leader)}; new leader {cluster.node_name(new_leader)}; confirmed "
            f"{confirmed}, nacked {result['nacked']}, unconfirmed on a failed connection "
            f"{result['abandoned']}, in the queue after {stored}, reconnects {result['reconnects']}")
        return out

    return measure


NO_ANY_NODE = ("not measured: on this build a publish on a node that does not lead the queue does not reach "
               "the leader (no any-node access)")


def any_node_publish(cluster: BenchCluster) -> bool:
    """Whether a confirmed publish on the follower's node reaches the queue at its leader (any-node access):
    published to a probe queue, fetched with basic.get on the leader's node."""
    if cluster.kind == "rabbitmq":
        return True
    probe = f"bench-probe-{time.monotonic_ns()}"
    cluster.declare([probe], on=[0])
    try:
        probe_leader = cluster.leader_of(probe)
        follower = next(i for i in range(cluster.size) if i != probe_leader)
        with pika.BlockingConnection(pika.URLParameters(cluster.url(follower))) as connection:
            channel = connection.channel()
            channel.confirm_delivery()
            channel.basic_publish("", probe, b"probe", pika.BasicProperties(delivery_mode=2))
        with pika.BlockingConnection(pika.URLParameters(cluster.url(probe_leader))) as connection:
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                if connection.channel().basic_get(probe, auto_ack=True)[0] is not None:
                    return True
                time.sleep(0.1)
        return False
    except pika.exceptions.AMQPError:
        return False
    finally:
        cluster.delete([probe])


def cases() -> list[ClusterCase]:
    confirm = tuple(Metric(f"confirm {p} ms", higher_is_better=False) for p in ("p50", "p99", "p99.9"))
    failed_over = (Metric("failover s", higher_is_better=False),
                   Metric("confirmed lost", higher_is_better=None))
    return [
        ClusterCase(1, "throughput: persistent, 1000 confirms in flight, producer + consumer on the leader",
                    (Metric("confirmed/s"), Metric("delivered/s")), throughput),
        ClusterCase(2, f"confirm latency at {RATE} msg/s (persistent, consumer on the leader)",
                    (*confirm, Metric("delivery p99 ms", higher_is_better=False)), latency),
        ClusterCase(3, f"failover: kill -9 of the leader's node at {RATE} msg/s, client on it (reconnects)",
                    failed_over, failover(client_on_leader=True)),
        ClusterCase(4, f"failover: kill -9 of the leader's node at {RATE} msg/s, client on a follower",
                    failed_over, failover(client_on_leader=False)),
        ClusterCase(5, f"confirm latency at {RATE} msg/s, one follower's node at nice {SLOW_NICE}",
                    (*confirm, Metric("delivery p99 ms", higher_is_better=False)), slow_follower_latency),
    ]


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.replicated", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 repeat, 4 s runs")
    parser.add_argument("--cases", default="1,2,3,4", help="comma-separated case numbers (5: opt-in)")
    parser.add_argument("--repeat", type=int, help="runs per cluster and case (default 3; 1 with --quick)")
    parser.add_argument("--duration", type=float, help="seconds per throughput/latency run (default 10)")
    args = parser.parse_args(argv)
    args.cases = {int(part) for part in args.cases.split(",") if part.strip()}
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.duration is None:
        args.duration = 4.0 if args.quick else 10.0
    return args


def main(argv: list[str]) -> int:
    args = parse(argv)
    tools = prepare("bench.replicated")
    if tools is None:
        return 2
    selected = [case for case in cases() if case.scenario in args.cases]
    settings = Settings(tools.loadgen, args.duration, warmup=1.0)
    extra = {"open files limit": tools.nofile, "repeats": args.repeat, "seconds per run": args.duration,
             "nodes": SIZE, "loadgen": str(tools.loadgen)}
    env = environment(argv, extra, "python -m bench.replicated")
    results: dict[int, list[Measurement]] = {}
    with tempfile.TemporaryDirectory(prefix="leveret-bench-replicated-") as root:
        clusters = [new_cluster(kind, Path(root) / kind, SIZE) for kind in tools.kinds]
        try:
            for cluster in clusters:
                print(f"== starting {SIZE} {cluster.kind} nodes", file=sys.stderr, flush=True)
                cluster.start()
            for index, case in enumerate(selected):
                print(f"== [{case.scenario}] {case.label}", file=sys.stderr, flush=True)
                results[index] = run_case(case, clusters, settings, args.repeat)
        finally:
            for cluster in clusters:
                cluster.stop()
    return report(env, selected, results, "replicated")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
