"""Aggregate throughput through an x-consistent-hash exchange over quorum queues led by different nodes, on
1, 2 and 3 nodes: Leveret (with as many etcd members) against RabbitMQ 3.10 (its consistent-hash plugin),
a fresh cluster of each per node count, alternated in the same run, reported as Leveret/RabbitMQ ratios.

    python -m bench.cluster_scaling                 # 1-3 nodes, 3 replicas, 3 repeats, 10 s runs
    python -m bench.cluster_scaling --quick         # 1 repeat, 4 s runs
    python -m bench.cluster_scaling --nodes 1,3 --replication-factor 1,3 --profile

Per run: `--queues` durable quorum queues with x-quorum-initial-group-size = the replication factor
(capped at the node count), queue i declared through node i mod N (where RabbitMQ puts its leader) under a
name that Leveret's placement also gives a leader on node i mod N, each bound with weight "1" to a durable
x-consistent-hash exchange. On every node one load generator: `--producers` producers publishing
persistent 256-byte messages with random routing keys to the exchange, 1000 confirms in flight each, and
one consumer per queue that node leads (prefetch 1000, an ack per 100). Figures: confirmed/s and
delivered/s summed over the nodes; the notes give CPU µs per confirmed message per node, etcd and load
generator. All processes share this machine's cores, so the curve shows what one machine's CPUs allow,
not what separate hosts would (bench/README.md works out the bound).
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pika
import pika.exceptions

from bench.cluster_runs import ClusterCase, Settings, Window, hosts, report, run_case, run_window, sample
from bench.clusters import QUORUM, BenchCluster, new_cluster
from bench.procfs import raise_nofile
from bench.pyspy import MARGIN, RATE, own_time, py_spy
from bench.report import environment
from bench.runner import Measurement
from bench.scenarios import BODY, CONSUMING, Metric, Sample
from bench.toolchain import ToolchainError, build_loadgen, ensure_rabbitmq
from leveret.broker.cluster.placement import leader_of

CONFIRM_WINDOW = 1000
# Weight of each binding: every queue gets the same share of the hash ring.
WEIGHT = "1"
LEADER_WAIT = 60.0


def declare_topology(cluster: BenchCluster, exchange: str, queues: list[str], replicas: int) -> None:
    arguments = {**QUORUM, "x-quorum-initial-group-size": replicas}
    for index, queue in enumerate(queues):
        on_channel(cluster, index % cluster.size, "queue_declare", queue, durable=True, arguments=arguments)
    on_channel(cluster, 0, "exchange_declare", exchange, "x-consistent-hash", durable=True)
    for queue in queues:
        on_channel(cluster, 0, "queue_bind", queue, exchange, routing_key=WEIGHT)


def delete_topology(cluster: BenchCluster, exchange: str, queues: list[str]) -> None:
    for queue in queues:
        on_channel(cluster, cluster.live()[0], "queue_delete", queue)
    on_channel(cluster, cluster.live()[0], "exchange_delete", exchange)


def on_channel(cluster: BenchCluster, node: int, method: str, *args: Any, **kwargs: Any) -> None:
    """The channel `method` on a new connection to the node, again while a queue has no leader that
    answers: a Leveret node asks the leader for what a declare, bind or delete needs (404 "no reachable
    leader" after the 5 s such a call waits). Seen for 60 s on a loaded machine before leadership decided
    every queue again after its lease's deadline had passed (a leader deposed behind its own live key);
    kept for a leader that is really gone, as RabbitMQ gives 404 for a queue whose node is down."""
    deadline = time.monotonic() + LEADER_WAIT
    while True:
        try:
            with pika.BlockingConnection(pika.URLParameters(cluster.url(node))) as connection:
                getattr(connection.channel(), method)(*args, **kwargs)
            return
        except pika.exceptions.ChannelClosedByBroker as error:
            if error.reply_code != 404 or "no reachable leader" not in error.reply_text \
                    or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def balanced_names(prefix: str, count: int, size: int) -> list[str]:
    """Queue names that Leveret's placement (rendezvous hashing of the name) gives leaders node i mod N
    for queue i, as declaring queue i through node i mod N does on RabbitMQ: both clusters get the same
    names and the same spread of leaders."""
    nodes = [f"node{i + 1}" for i in range(size)]  # LocalCluster's node names
    names = []
    for index in range(count):
        name = f"{prefix}-q{index}"
        tries = itertools.count(1)
        while leader_of("/", name, nodes) != nodes[index % size]:
            name = f"{prefix}-q{index}-{next(tries)}"
        names.append(name)
    return names


def node_load(cluster: BenchCluster, settings: Settings, node: int, exchange: str, led: list[str],
              producers: int) -> Window:
    """One node's load generator: producers to the exchange, a consumer for each queue the node leads."""
    args = ["--mode", "both" if led else "produce", "--producers", str(producers), "--exchange", exchange,
            "--random-keys", "--no-declare", "--persistent", "--confirm", str(CONFIRM_WINDOW),
            "--duration", str(settings.duration), "--hosts", hosts(cluster, [node])]
    if led:
        args += [*CONSUMING, "--consumers", str(len(led)), "--consume-queues", ",".join(led)]
    else:
        args += ["--body", str(BODY)]
    return run_window(cluster, settings, args, settings.duration)


def cpu_breakdown(cluster: BenchCluster, window: Window, confirmed: int,
                  loadgen_cpu: float) -> tuple[dict[str, float], str]:
    """CPU µs per confirmed message of each node, of etcd and of the load generators over the window, and
    a line saying so: the work per message, which bounds the rate 2 cores allow whatever else runs on
    the machine (the rate itself is bounded by the share of the cores the run gets)."""
    per = max(confirmed, 1) / 1e6
    parts = {cluster.node_name(index): seconds / per for index, seconds in sorted(window.node_cpu.items())}
    if window.helper_cpu:
        parts["etcd"] = sum(window.helper_cpu.values()) / per
    parts["loadgen"] = loadgen_cpu / per
    total = sum(parts.values())
    text = ", ".join(f"{name} {value:.0f}" for name, value in parts.items())
    return parts, (f"{cluster.kind} on {cluster.size} node(s): CPU µs per confirmed message: {text}; "
                   f"total {total:.0f}")


def start_profiles(cluster: BenchCluster, seconds: float, directory: Path) -> list[subprocess.Popen[bytes]]:
    """py-spy on every Leveret node, from a margin after the load starts, for `seconds`."""
    spy = py_spy()
    command = ["sh", "-c", f'sleep {MARGIN}; exec "$0" "$@"', spy, "record", "--duration", str(int(seconds)),
               "--rate", str(RATE), "--format", "raw"]
    return [subprocess.Popen([*command, "--pid", str(cluster.pid(index)), "-o",
                              str(directory / f"node{index}")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for index in cluster.live()]


def profile_notes(cluster: BenchCluster, spies: list[subprocess.Popen[bytes]], directory: Path,
                  seconds: float, top: int = 12) -> list[str]:
    """Each node's top functions by own samples (py-spy counts a thread busy while it runs or waits for
    the CPU, so on a loaded machine a line that was merely preempted shows up too)."""
    notes = []
    for index, spy in zip(cluster.live(), spies, strict=True):
        spy.wait()
        path = directory / f"node{index}"
        counts = own_time(path.read_text()) if path.exists() else Counter()
        total = sum(counts.values()) or 1
        busiest = ", ".join(f"{name} {n / total:.0%}" for name, n in counts.most_common(top))
        notes.append(f"py-spy {cluster.node_name(index)} ({total} samples in {int(seconds)} s at {RATE} Hz): "
                     f"{busiest}")
    return notes


def scaling(queue_count: int, producers: int, replicas: int,
            profile: bool) -> Callable[[BenchCluster, Settings], Sample]:
    def measure(cluster: BenchCluster, settings: Settings) -> Sample:
        profiling = profile and cluster.kind == "leveret"
        spies: list[subprocess.Popen[bytes]] = []
        profiled = max(settings.duration - 2 * MARGIN, 1.0)
        spool = Path(tempfile.mkdtemp(prefix="leveret-bench-pyspy-"))
        exchange = settings.name("hash")
        queues = balanced_names(exchange, queue_count, cluster.size)
        try:
            declare_topology(cluster, exchange, queues, replicas)
            leaders = {queue: cluster.leader_of(queue) for queue in queues}
            led = [[q for q in queues if leaders[q] == node] for node in range(cluster.size)]
            with ThreadPoolExecutor(cluster.size) as pool:
                runs = [pool.submit(node_load, cluster, settings, node, exchange, led[node], producers)
                        for node in range(cluster.size)]
                if profiling:
                    spies = start_profiles(cluster, profiled, spool)
                windows = [run.result() for run in runs]
            notes = profile_notes(cluster, spies, spool, profiled) if profiling else []
            left = sum(int(cluster.queue(queue).get("messages") or 0) for queue in queues)
        finally:
            delete_topology(cluster, exchange, queues)
            shutil.rmtree(spool, ignore_errors=True)
        confirmed = sum(w.result["confirmed"] / max(w.result["elapsed"], 1e-9) for w in windows)
        delivered = sum(w.result["delivered"] / max(w.result["elapsed"], 1e-9) for w in windows)
        # The nodes' CPU over the first load generator's window (they all run at once, for the same time).
        first = windows[0]
        merged = sample(first, {"confirmed/s": confirmed, "delivered/s": delivered},
                        sum(w.result["delivered"] for w in windows))
        merged.loadgen_cpu = sum(w.result["cpu_user"] + w.result["cpu_sys"] for w in windows)
        merged.errors = [error for w in windows for error in w.result["errors"]]
        breakdown, line = cpu_breakdown(cluster, first, sum(w.result["confirmed"] for w in windows),
                                        merged.loadgen_cpu)
        merged.raw = {"nodes": [w.result for w in windows], "leaders": leaders, "messages_left": left,
                      "cpu_us_per_confirmed": breakdown}
        per_node = Counter(cluster.node_name(index) for index in leaders.values())
        merged.notes.append(f"{cluster.kind} on {cluster.size} node(s): queue leaders per node "
                            f"{dict(sorted(per_node.items()))}")
        merged.notes += [line, *notes]
        return merged

    return measure


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster_scaling", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 repeat, 4 s runs")
    parser.add_argument("--nodes", default="1,2,3", help="node counts to measure (default 1,2,3)")
    parser.add_argument("--queues", type=int, default=6, help="queues behind the exchange (default 6)")
    parser.add_argument("--producers", type=int, default=2, help="producers per node (default 2)")
    parser.add_argument("--replication-factor", default="3",
                        help="replicas per queue, a list measured on the same clusters, like 1,3 (default 3; "
                             "capped at the node count, as x-quorum-initial-group-size is)")
    parser.add_argument("--repeat", type=int, help="runs per cluster and node count (3; 1 with --quick)")
    parser.add_argument("--duration", type=float, help="seconds per run (default 10; 4 with --quick)")
    parser.add_argument("--profile", action="store_true",
                        help="py-spy on every Leveret node during each run: its top functions in the notes")
    args = parser.parse_args(argv)
    args.nodes = [int(part) for part in args.nodes.split(",") if part.strip()]
    if not args.nodes or not all(1 <= n <= 9 for n in args.nodes):
        parser.error("--nodes: counts between 1 and 9, like 1,2,3")
    args.replication_factor = [int(part) for part in args.replication_factor.split(",") if part.strip()]
    if not args.replication_factor or not all(1 <= n <= 9 for n in args.replication_factor):
        parser.error("--replication-factor: counts between 1 and 9, like 1,3")
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.duration is None:
        args.duration = 4.0 if args.quick else 10.0
    return args


def main(argv: list[str]) -> int:
    args = parse(argv)
    nofile = raise_nofile()
    try:
        binary = build_loadgen()
    except ToolchainError as exc:
        print(f"bench.cluster_scaling: {exc}", file=sys.stderr)
        return 2
    kinds = ["leveret"] + (["rabbitmq"] if ensure_rabbitmq() else [])
    settings = Settings(binary, args.duration, warmup=0.0)
    label = f"{args.queues} queues behind x-consistent-hash, {args.producers} producers per node"
    metrics = (Metric("confirmed/s"), Metric("delivered/s"))
    # One case per node count and replication factor (capped at the node count); the factors of one node
    # count share its clusters.
    cases = [ClusterCase(n, f"{n} node(s), {r} replica(s): {label}", metrics,
                         scaling(args.queues, args.producers, r, args.profile))
             for n in args.nodes for r in dict.fromkeys(min(f, n) for f in args.replication_factor)]
    extra = {"open files limit": nofile, "repeats": args.repeat, "seconds per run": args.duration,
             "loadgen": str(binary)}
    env = environment(argv, extra, "python -m bench.cluster_scaling")
    results: dict[int, list[Measurement]] = {}
    with tempfile.TemporaryDirectory(prefix="leveret-bench-scaling-") as root:
        for size in args.nodes:
            clusters = [new_cluster(kind, Path(root) / f"{kind}-{size}", size) for kind in kinds]
            try:
                for cluster in clusters:
                    print(f"== starting {size} {cluster.kind} node(s)", file=sys.stderr, flush=True)
                    cluster.start()
                for index, case in enumerate(cases):
                    if case.scenario == size:
                        print(f"== [{case.scenario}] {case.label}", file=sys.stderr, flush=True)
                        results[index] = run_case(case, clusters, settings, args.repeat)
            finally:
                for cluster in clusters:
                    cluster.stop()
    return report(env, cases, results, "cluster-scaling")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
