"""End-to-end latency at a steady rate, with another client stack than `python -m bench`'s C load generator.

    python -m bench.latency                       # every variant, 3 repeats, 10 s each
    python -m bench.latency --seconds 20 --repeat 5 --variants transient-ack,persistent-ack
    python -m bench.latency --brokers leveret --dump /tmp/lat   # per-message latencies, for timelines
    python -m bench.latency --instrument            # Leveret under bench.loopstats (see its docstring)
    python -m bench.latency --baseline /tmp/base    # and Leveret from another tree: before and after a change

A producer and a consumer, each a separate node process on amqplib (bench/node/), one connection each. The
producer sends 256-byte messages at a steady --rate (default 1000/s) to one queue through the default
exchange, each body stamped with its send time (CLOCK_MONOTONIC, ns); the consumer records delivery time
minus send time for each. The first --warmup seconds of messages are dropped. Leveret and RabbitMQ are
started once each and measured in the same invocation, alternating which goes first in each repeat, so a
drift in the machine's load falls on both; each ratio is Leveret's figure over RabbitMQ's from two runs made
back to back. `runq ms/s` is the time the broker's threads spent runnable but waiting for a CPU
(/proc/PID/task/*/schedstat), per second of the run: how much the machine's load took from it.

Variants:
- transient-ack: transient messages, non-durable queue; the consumer acks each message (prefetch 1000);
- transient-noack: the same with auto-ack;
- persistent-ack: persistent messages on a durable queue, publisher confirms (the producer does not wait for
  them: confirms are collected as they come), consumer acks each message.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench import loopstats
from bench.procfs import cpu_seconds
from interop.brokers import Broker, LeveretBroker, RabbitMQBroker, rabbitmq_server_script

ROOT = Path(__file__).parent.parent
NODE_DIR = Path(__file__).with_name("node")
NODE_MODULES = ROOT / "interop" / "node" / "node_modules"
VARIANTS = {
    "transient-ack": {"CONFIRM": "0", "NOACK": "0", "DURABLE": "0"},
    "transient-noack": {"CONFIRM": "0", "NOACK": "1", "DURABLE": "0"},
    "persistent-ack": {"CONFIRM": "1", "NOACK": "0", "DURABLE": "1"},
}
PERCENTILES = (("p50", 50.0), ("p99", 99.0), ("p99.9", 99.9))
PAUSE = 1.0  # between runs, so one run's teardown is not the next one's load


def percentile(ordered: list[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    index = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


@dataclass
class Run:
    broker: str
    variant: str
    figures: dict[str, float]  # p50, p99, p99.9, max in ms
    samples: int
    load: str  # the 1-minute load average when the run ended
    runq: float  # ms per second the broker's threads waited for a CPU
    cpu: float  # broker CPU µs per message over the run


class InstrumentedLeveret(LeveretBroker):
    """Leveret run by bench.loopstats, which writes its loop and GC record to `stats_path` on SIGTERM."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.stats_path = workdir / "loopstats.json"

    def command(self) -> list[str]:
        command = super().command()
        return [command[0], "-m", "bench.loopstats", *command[3:]]

    def environment(self) -> dict[str, str]:
        return dict(os.environ, LOOPSTATS=str(self.stats_path), PYTHONPATH=str(ROOT))


def run_delays(pid: int) -> dict[int, int]:
    """Per thread, the ns it has spent runnable, waiting on a run queue (schedstat field 2)."""
    delays = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            delays[int(task.name)] = int((task / "schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue  # the thread just ended
    return delays


def waited_since(pid: int, before: dict[int, int]) -> float:
    """Seconds of run-queue wait since `before`; threads that ended meanwhile drop out, not below zero."""
    return sum(delay - before.get(tid, 0) for tid, delay in run_delays(pid).items()) / 1e9


def node_env(broker: Broker, queue: str, extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ, AMQP_URL=broker.url, QUEUE=queue, NODE_PATH=str(NODE_MODULES))
    env.update(extra)
    return env


def one_run(broker: Broker, variant: str, rate: int, seconds: float, warmup: float, serial: int,
            dump: Path | None) -> Run:
    count = int(rate * seconds)
    queue = f"latency-{variant}-{serial}"
    env = node_env(broker, queue, {**VARIANTS[variant], "COUNT": str(count), "RATE": str(rate)})
    waited, cpu = run_delays(broker.pid), cpu_seconds(broker.pid)
    started = time.monotonic()
    consumer = subprocess.Popen(["node", str(NODE_DIR / "latency_consumer.js")], env=env,
                                stdout=subprocess.PIPE, text=True)
    try:
        assert consumer.stdout is not None
        if consumer.stdout.readline().strip() != "ready":
            raise RuntimeError(f"{broker.kind}: the consumer did not start")
        producer = subprocess.run(["node", str(NODE_DIR / "latency_producer.js")], env=env,
                                  capture_output=True, text=True, timeout=seconds + 60, check=True)
        out, _ = consumer.communicate(timeout=30)
    finally:
        if consumer.poll() is None:
            consumer.kill()
            consumer.wait()
    runq = waited_since(broker.pid, waited) / (time.monotonic() - started) * 1000
    cpu = (cpu_seconds(broker.pid) - cpu) / count * 1e6
    result = json.loads(out)
    sent = json.loads(producer.stdout)
    skip = int(rate * warmup)
    kept = [lat for seq, lat in zip(result["seq"], result["latency_us"], strict=True) if seq >= skip]
    if result["received"] < count:
        raise RuntimeError(f"{broker.kind} {variant}: {result['received']} of {count} messages arrived")
    if dump is not None:
        dump.mkdir(parents=True, exist_ok=True)
        (dump / f"{serial:03d}-{broker.kind}-{variant}.json").write_text(json.dumps(
            {**result, "rate": rate, "producer": sent, "broker": broker.kind, "variant": variant}))
    ordered = sorted(kept)
    figures = {name: percentile(ordered, pct) / 1000 for name, pct in PERCENTILES}
    figures["max"] = ordered[-1] / 1000
    return Run(broker.kind, variant, figures, len(kept), f"{os.getloadavg()[0]:.1f}", runq, cpu)


class BaselineLeveret(LeveretBroker):
    """Leveret from another source tree (a `git archive` of an earlier commit): the "before" of a change."""

    kind = "baseline"

    def __init__(self, workdir: Path, tree: Path) -> None:
        super().__init__(workdir)
        self.tree = tree

    def environment(self) -> dict[str, str]:
        return dict(os.environ, PYTHONPATH=str(self.tree))


def make_brokers(root: Path, names: list[str], instrument: bool, baseline: Path | None) -> list[Broker]:
    brokers: list[Broker] = []
    for name in names:
        if name == "leveret":
            leveret = InstrumentedLeveret if instrument else LeveretBroker
            brokers.append(leveret(root / "leveret"))
            if baseline is not None:
                brokers.append(BaselineLeveret(root / "baseline", baseline))
        else:
            script = rabbitmq_server_script()
            if script is None:
                print("rabbitmq-server is not installed: Leveret alone, no ratio", file=sys.stderr)
                continue
            brokers.append(RabbitMQBroker(root / "rabbitmq", script))
    return brokers


def report(runs: list[Run], variants: list[str]) -> str:
    """Medians per broker kind, and each Leveret kind's ratio to RabbitMQ from the runs made together."""
    kinds = list(dict.fromkeys(r.broker for r in runs))
    ours = [kind for kind in kinds if kind != "rabbitmq"]
    compared = ours if "rabbitmq" in kinds else []
    lines = ["| variant | figure | " + " | ".join(f"{kind} ms" for kind in kinds)
             + "".join(f" | {kind}/rabbitmq ↓ (min–max)" for kind in compared) + " |",
             "|---|---|" + "--:|" * (len(kinds) + len(compared))]

    def median(values: list[float]) -> str:
        return f"{statistics.median(values):.3f}" if values else "-"

    def of(kind: str, variant: str) -> list[Run]:
        return [r for r in runs if r.broker == kind and r.variant == variant]

    for variant in variants:
        for name in ("p50", "p99", "p99.9", "max"):
            cells = [median([r.figures[name] for r in of(kind, variant)]) for kind in kinds]
            for kind in compared:
                pairs = zip(of(kind, variant), of("rabbitmq", variant), strict=True)
                ratios = [a.figures[name] / b.figures[name] for a, b in pairs]
                cells.append(f"{statistics.median(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f})")
            lines.append(f"| {variant if name == 'p50' else ''} | {name} | " + " | ".join(cells) + " |")
    for field, label in (("runq", "broker runq ms/s"), ("cpu", "broker CPU µs/msg")):
        cells = [median([getattr(r, field) for r in runs if r.broker == kind]) for kind in kinds]
        lines.append(f"| all | {label} | " + " | ".join(cells) + " |" * (len(compared) + 1))
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=int, default=1000, help="messages per second (default 1000)")
    parser.add_argument("--seconds", type=float, default=10.0, help="per run (default 10)")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of messages dropped (default 1)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--brokers", default="leveret,rabbitmq")
    parser.add_argument("--dump", type=Path, help="write each run's per-message latencies here")
    parser.add_argument("--baseline", type=Path, metavar="TREE",
                        help="also run Leveret from this source tree (`git archive main | tar -x -C TREE`)")
    parser.add_argument("--instrument", action="store_true",
                        help="run Leveret under bench.loopstats and print its summary (record: --dump)")
    args = parser.parse_args(argv)
    variants = args.variants.split(",")
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {', '.join(sorted(unknown))}; choose among {', '.join(VARIANTS)}")
    print(f"uptime at start: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    runs: list[Run] = []
    began = time.monotonic()

    def elapsed() -> float:
        return time.monotonic() - began

    with tempfile.TemporaryDirectory(prefix="leveret-latency-") as tmp:
        brokers = make_brokers(Path(tmp), args.brokers.split(","), args.instrument, args.baseline)
        try:
            for broker in brokers:
                broker.start()
            serial = 0
            for repeat in range(args.repeat):
                for variant in variants:
                    order = brokers if repeat % 2 == 0 else brokers[::-1]
                    for broker in order:
                        serial += 1
                        run = one_run(broker, variant, args.rate, args.seconds, args.warmup, serial,
                                      args.dump)
                        runs.append(run)
                        figures = ", ".join(f"{k} {v:.3f}" for k, v in run.figures.items())
                        print(f"  #{repeat + 1} {variant} {broker.kind}: {figures} ms "
                              f"({run.samples} samples, load {run.load}, runq {run.runq:.0f} ms/s, "
                              f"cpu {run.cpu:.0f} µs/msg)",
                              file=sys.stderr, flush=True)
                        time.sleep(PAUSE)
        finally:
            for broker in brokers:
                broker.close()
                if isinstance(broker, InstrumentedLeveret) and broker.stats_path.exists():
                    record = json.loads(broker.stats_path.read_text())
                    print(f"Leveret's loop and GC (bench.loopstats):\n{loopstats.summary(record, elapsed())}")
                    if args.dump:
                        args.dump.mkdir(parents=True, exist_ok=True)
                        (args.dump / "loopstats.json").write_bytes(broker.stats_path.read_bytes())
    print(f"uptime at end: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    print(f"rate {args.rate}/s, {args.seconds:g} s per run, first {args.warmup:g} s dropped, "
          f"{args.repeat} repeats, brokers alternated\n")
    print(report(runs, variants))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
