"""Aggregate throughput through an x-consistent-hash exchange over quorum queues led by different nodes, on
1, 2 and 3 nodes: Leveret (with as many etcd members) against RabbitMQ 3.10 (its consistent-hash plugin),
a fresh cluster of each per node count, alternated in the same run, reported as Leveret/RabbitMQ ratios.

    python -m bench.cluster_scaling                 # 1-3 nodes, 3 replicas, 3 repeats, 10 s runs
    python -m bench.cluster_scaling --quick         # 1 repeat, 4 s runs
    python -m bench.cluster_scaling --nodes 1,3 --replication-factor 1,3 --profile
    python -m bench.cluster_scaling --replication-factor 1 --routing aware,random --producers 4

Per run: `--queues` durable quorum queues with x-quorum-initial-group-size = the replication factor
(capped at the node count), queue i declared through node i mod N (where RabbitMQ puts its leader) under a
name that Leveret's placement also gives a leader on node i mod N, each bound with weight "1" to a durable
x-consistent-hash exchange. On every node one load generator: `--producers` producers publishing
persistent 256-byte messages to the exchange, `--confirms` (1000) in flight each, and one consumer per
queue that node leads (prefetch 1000, an ack per 100). `--routing aware` (the default): each node's
producers publish only keys that the exchange sends to the queues that node leads (found by asking the
cluster before the run), as a producer that knows the ring would, so no publish crosses to another
node; `--routing random`: random keys, so (N-1)/N of them are forwarded to their queue's leader.
Figures: confirmed/s and delivered/s summed over the nodes; the notes give CPU µs per confirmed message
and cores used per node, etcd and load generator. All processes share this machine's cores, so the
curve shows what one machine's CPUs allow, not what separate hosts would (bench/README.md works out the
bound).
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pika
import pika.exceptions

from bench.cluster_runs import (
    PAUSE,
    ClusterCase,
    Settings,
    Window,
    hosts,
    measure,
    progress,
    report,
    run_window,
    sample,
)
from bench.clusters import QUORUM, BenchCluster, new_cluster
from bench.pyspy import MARGIN, RATE, own_time, py_spy
from bench.report import environment
from bench.runner import Measurement
from bench.scenarios import BODY, CONSUMING, Metric, Sample
from bench.toolchain import prepare
from leveret.broker.cluster.placement import leader_of

# Keys found per queue for a consistent-hash-aware producer, and how many rounds of candidates that may take.
KEYS_PER_QUEUE = 16
KEY_ROUNDS = 8
# Weight of each binding: every queue gets the same share of the hash ring.
WEIGHT = "1"
LEADER_WAIT = 60.0


@dataclass(frozen=True)
class Load:
    """Each node's load generator's producers and the confirms each keeps in flight."""

    producers: int
    confirms: int


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


def keys_by_queue(cluster: BenchCluster, exchange: str, queues: list[str],
                  per_queue: int) -> dict[str, list[str]]:
    """`per_queue` routing keys that the exchange sends to each queue, found as a producer that knows the
    ring would know them: candidate keys published once each, then every queue drained with basic.get.
    Asking the cluster keeps it right for both brokers (RabbitMQ hashes with phash2, Leveret with BLAKE2b)."""
    found: dict[str, list[str]] = {queue: [] for queue in queues}
    for batch in itertools.count():
        candidates = [f"k{batch}-{i}" for i in range(len(queues) * per_queue)]
        with pika.BlockingConnection(pika.URLParameters(cluster.url(0))) as connection:
            channel = connection.channel()
            channel.confirm_delivery()
            for key in candidates:
                channel.basic_publish(exchange, key, key.encode())
            drained = 0
            for queue in queues:
                while (got := channel.basic_get(queue, auto_ack=True))[0] is not None:
                    found[queue].append(got[2].decode())
                    drained += 1
        if drained != len(candidates):
            raise RuntimeError(f"key probe: published {len(candidates)} keys, drained {drained}")
        if all(len(keys) >= per_queue for keys in found.values()) or batch == KEY_ROUNDS:
            return {queue: keys[:per_queue] for queue, keys in found.items()}


def routing_keys(led: list[str], keys: dict[str, list[str]]) -> list[str]:
    """A consistent-hash-aware producer's options: keys that land on the queues its node leads (random
    keys where the node leads none)."""
    mine = [key for queue in led for key in keys[queue]]
    return ["--keys", ",".join(mine)] if mine else ["--random-keys"]


def node_load(cluster: BenchCluster, settings: Settings, node: int, exchange: str, led: list[str],
              load: Load, keys: dict[str, list[str]] | None) -> Window:
    """One node's load generator: producers to the exchange (with random keys, or with `keys` those that
    land on the queues this node leads), a consumer for each queue the node leads."""
    chosen = routing_keys(led, keys) if keys is not None else ["--random-keys"]
    args = ["--mode", "both" if led else "produce", "--producers", str(load.producers),
            "--exchange", exchange, *chosen, "--no-declare", "--persistent", "--confirm", str(load.confirms),
            "--duration", str(settings.duration), "--hosts", hosts(cluster, [node])]
    if led:
        args += [*CONSUMING, "--consumers", str(len(led)), "--consume-queues", ",".join(led)]
    else:
        args += ["--body", str(BODY)]
    return run_window(cluster, settings, args, settings.duration)


def cpu_breakdown(cluster: BenchCluster, window: Window, confirmed: int,
                  loadgen_cpu: float) -> tuple[dict[str, float], dict[str, float], str]:
    """CPU µs per confirmed message and cores used (CPU seconds per wall second) of each node, of etcd and
    of the load generators over the window, and a line saying so: the work per message bounds the rate 2
    cores allow whatever else runs on the machine; the cores show whether the run was CPU-bound (a
    Leveret node near 1.0, or all of them near the machine's 2)."""
    per = max(confirmed, 1) / 1e6
    seconds = {cluster.node_name(index): used for index, used in sorted(window.node_cpu.items())}
    if window.helper_cpu:
        seconds["etcd"] = sum(window.helper_cpu.values())
    seconds["loadgen"] = loadgen_cpu
    parts = {name: used / per for name, used in seconds.items()}
    cores = {name: used / max(window.wall, 1e-9) for name, used in seconds.items()}
    text = ", ".join(f"{name} {parts[name]:.0f} ({cores[name]:.2f})" for name in parts)
    return parts, cores, (f"{cluster.kind} on {cluster.size} node(s): CPU µs per confirmed message (cores): "
                          f"{text}; total {sum(parts.values()):.0f} ({sum(cores.values()):.2f})")


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


def scaling(queue_count: int, load: Load, replicas: int, aware: bool,
            profile: bool) -> Callable[[BenchCluster, Settings], Sample]:
    def measure(cluster: BenchCluster, settings: Settings) -> Sample:
        profiling = profile and cluster.kind == "leveret"
        spies: list[subprocess.Popen[bytes]] = []
        profiled = max(settings.duration - 2 * MARGIN, 1.0)
        spool = Path(tempfile.mkdtemp(prefix="leveret-bench-pyspy-"))
        exchange = settings.name("hash")
        queues = balanced_names(exchange, queue_count, cluster.size)
        losses = cluster.leader_losses()
        try:
            declare_topology(cluster, exchange, queues, replicas)
            leaders = {queue: cluster.leader_of(queue) for queue in queues}
            led = [[q for q in queues if leaders[q] == node] for node in range(cluster.size)]
            keys = keys_by_queue(cluster, exchange, queues, KEYS_PER_QUEUE) if aware else None
            with ThreadPoolExecutor(cluster.size) as pool:
                runs = [pool.submit(node_load, cluster, settings, node, exchange, led[node], load, keys)
                        for node in range(cluster.size)]
                if profiling:
                    spies = start_profiles(cluster, profiled, spool)
                windows = [run.result() for run in runs]
            notes = profile_notes(cluster, spies, spool, profiled) if profiling else []
            left = sum(int(cluster.queue(queue).get("messages") or 0) for queue in queues)
        finally:
            shutil.rmtree(spool, ignore_errors=True)  # first: a failed delete must not leave it behind
            delete_topology(cluster, exchange, queues)
        confirmed = sum(w.result["confirmed"] / max(w.result["elapsed"], 1e-9) for w in windows)
        delivered = sum(w.result["delivered"] / max(w.result["elapsed"], 1e-9) for w in windows)
        # The nodes' CPU over the first load generator's window (they all run at once, for the same time).
        first = windows[0]
        merged = sample(first, {"confirmed/s": confirmed, "delivered/s": delivered},
                        sum(w.result["delivered"] for w in windows))
        merged.loadgen_cpu = sum(w.result["cpu_user"] + w.result["cpu_sys"] for w in windows)
        merged.errors = [error for w in windows for error in w.result["errors"]]
        breakdown, cores, line = cpu_breakdown(cluster, first, sum(w.result["confirmed"] for w in windows),
                                        merged.loadgen_cpu)
        merged.raw = {"nodes": [w.result for w in windows], "leaders": leaders, "messages_left": left,
                      "cpu_us_per_confirmed": breakdown, "cores": cores, "routing_keys": keys}
        per_node = Counter(cluster.node_name(index) for index in leaders.values())
        merged.notes.append(f"{cluster.kind} on {cluster.size} node(s): queue leaders per node "
                            f"{dict(sorted(per_node.items()))}")
        merged.notes += [line, *notes]
        if losses is not None:
            lost = (cluster.leader_losses() or 0) - losses
            merged.raw["leader_losses"] = lost
            if lost:
                merged.notes.append(f"{cluster.kind} on {cluster.size} node(s): {lost} queue leader(s) "
                                    "let go for a lapsed lease during the run")
        return merged

    return measure


def run_interleaved(cases: list[ClusterCase], clusters: dict[int, list[BenchCluster]], settings: Settings,
                    repeats: int) -> dict[int, list[Measurement]]:
    """Each repeat measures every case in turn (in reverse every other repeat) on the clusters of its node
    count, which all run for the whole command: the node counts are compared within the same minutes of a
    shared machine, not over minutes apart. Within a case the brokers alternate (L R, R L, ...)."""
    results: dict[int, list[Measurement]] = {index: [] for index in range(len(cases))}
    order = list(enumerate(cases))
    for repeat in range(repeats):
        for index, case in order if repeat % 2 == 0 else order[::-1]:
            print(f"== [{case.scenario}] {case.label} #{repeat + 1}", file=sys.stderr, flush=True)
            pair = clusters[case.scenario]
            for cluster in pair if repeat % 2 == 0 else pair[::-1]:
                measurement = measure(case, cluster, settings, repeat)
                progress(case, measurement)
                results[index].append(measurement)
                time.sleep(PAUSE)
    return results


def growth(cases: list[ClusterCase], results: dict[int, list[Measurement]]) -> str:
    """Each broker's confirmed/s on N nodes over its 1-node rate of the same repeat (measured minutes
    apart at most), one line per case: the scaling curve, as ratios taken under the same load."""
    single = next((index for index, case in enumerate(cases) if case.scenario == 1), None)
    if single is None:
        return "not measured (no 1-node case)"
    base = {(m.kind, m.repeat): m.sample.metrics["confirmed/s"] for m in results[single] if m.sample}
    lines = []
    for index, case in enumerate(cases):
        if index == single:
            continue
        parts = []
        for kind in dict.fromkeys(m.kind for m in results[index]):
            ratios = [m.sample.metrics["confirmed/s"] / base[kind, m.repeat] for m in results[index]
                      if m.kind == kind and m.sample and base.get((kind, m.repeat))]
            if ratios:
                parts.append(f"{kind} {statistics.median(ratios):.2f}x ("
                             + " / ".join(f"{r:.2f}" for r in ratios) + ")")
        lines.append(f"{case.label.split(':')[0]}: " + ", ".join(parts))
    return "\n".join(lines)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster_scaling", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 repeat, 4 s runs")
    parser.add_argument("--nodes", default="1,2,3", help="node counts to measure (default 1,2,3)")
    parser.add_argument("--queues", type=int, default=6, help="queues behind the exchange (default 6)")
    parser.add_argument("--producers", type=int, default=2, help="producers per node (default 2)")
    parser.add_argument("--confirms", type=int, default=1000,
                        help="confirms each producer keeps in flight (default 1000)")
    parser.add_argument("--routing", default="aware",
                        help="routing keys, a list measured on the same clusters: 'aware' (each node's "
                             "producers publish keys that hash to the queues it leads, as a producer that "
                             "knows the ring would) or 'random' (random keys: (N-1)/N of the publishes go "
                             "to another node's queue); default aware")
    parser.add_argument("--replication-factor", default="3",
                        help="replicas per queue, a list measured on the same clusters, like 1,3 (default 3; "
                             "capped at the node count, as x-quorum-initial-group-size is)")
    parser.add_argument("--repeat", type=int, help="runs per cluster and node count (3; 1 with --quick)")
    parser.add_argument("--duration", type=float, help="seconds per run (default 10; 4 with --quick)")
    parser.add_argument("--lease-ttl", type=int,
                        help="Leveret's cluster.lease_ttl in seconds (default: its default, 2)")
    parser.add_argument("--profile", action="store_true",
                        help="py-spy on every Leveret node during each run: its top functions in the notes")
    args = parser.parse_args(argv)
    args.nodes = [int(part) for part in args.nodes.split(",") if part.strip()]
    if not args.nodes or not all(1 <= n <= 9 for n in args.nodes):
        parser.error("--nodes: counts between 1 and 9, like 1,2,3")
    args.replication_factor = [int(part) for part in args.replication_factor.split(",") if part.strip()]
    if not args.replication_factor or not all(1 <= n <= 9 for n in args.replication_factor):
        parser.error("--replication-factor: counts between 1 and 9, like 1,3")
    args.routing = [part.strip() for part in args.routing.split(",") if part.strip()]
    if not args.routing or not set(args.routing) <= {"aware", "random"}:
        parser.error("--routing: aware, random or both, like aware,random")
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.duration is None:
        args.duration = 4.0 if args.quick else 10.0
    return args


def main(argv: list[str]) -> int:
    args = parse(argv)
    tools = prepare("bench.cluster_scaling")
    if tools is None:
        return 2
    settings = Settings(tools.loadgen, args.duration, warmup=0.0)
    label = (f"{args.queues} queues behind x-consistent-hash, {args.producers} producers per node, "
             f"{args.confirms} confirms in flight each")
    load = Load(args.producers, args.confirms)
    metrics = (Metric("confirmed/s"), Metric("delivered/s"))
    # One case per node count, replication factor (capped at the node count) and routing (one node leads
    # every queue: there the routings are the same, and only the first is measured); the cases of one
    # node count share its clusters.
    cases = [ClusterCase(n, f"{n} node(s), {r} replica(s), {routing} keys: {label}", metrics,
                         scaling(args.queues, load, r, routing == "aware", args.profile))
             for n in args.nodes for r in dict.fromkeys(min(f, n) for f in args.replication_factor)
             for routing in (args.routing if n > 1 else args.routing[:1])]
    extra = {"open files limit": tools.nofile, "repeats": args.repeat, "seconds per run": args.duration,
             "loadgen": str(tools.loadgen)}
    env = environment(argv, extra, "python -m bench.cluster_scaling")
    with tempfile.TemporaryDirectory(prefix="leveret-bench-scaling-") as root:
        clusters = {size: [new_cluster(kind, Path(root) / f"{kind}-{size}", size, args.lease_ttl)
                           for kind in tools.kinds]
                    for size in args.nodes}
        try:
            for size, pair in clusters.items():
                for cluster in pair:
                    print(f"== starting {size} {cluster.kind} node(s)", file=sys.stderr, flush=True)
                    cluster.start()
            results = run_interleaved(cases, clusters, settings, args.repeat)
        finally:
            for pair in clusters.values():
                for cluster in pair:
                    cluster.stop()
    env["growth over 1 node"] = growth(cases, results)
    return report(env, cases, results, "cluster-scaling")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
