"""The scenarios: what each runs with the load generator against one broker, and the figures it keeps."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import loadgen
from bench.procfs import cpu_seconds, open_files_limit, rss_bytes, written_bytes
from interop.brokers import Broker

BODY = 256
# Every consumer: manual acks, one multiple ack per ACK_EVERY deliveries, PREFETCH unacked at most.
PREFETCH = 1000
ACK_EVERY = 100
CONFIRM_WINDOW = 1000
CONSUMING = ["--body", str(BODY), "--prefetch", str(PREFETCH), "--ack-every", str(ACK_EVERY)]
LATENCY_RATE = 1000
FANOUT_QUEUES = 4
QUEUE_POINTS = (1, 10, 100)
MIN_BACKLOG = 10_000
CLIENT_POINTS = (1, 10, 100)
# Memory figures wait this long after the load so that allocators and garbage collectors settle.
SETTLE = 3.0
# Upper bound on filling a queue for scenario 5 (the load generator stops there even if unfinished).
FILL_LIMIT = 300.0
# Below this many bytes written per persistent message, a broker kept them in memory only.
NO_DISK_WRITES = 16
NO_DISK_STORE = ("Leveret wrote no message data to disk in this run: its confirms waited for no fsync while "
                 "RabbitMQ's went through its message store, so this ratio compares unlike work.")


@dataclass
class Context:
    loadgen: Path
    duration: float  # of each throughput or latency run
    warmup: float  # latency samples sent in the first seconds are dropped
    queued_count: int  # messages left in a queue by scenario 5
    idle_connections: int  # connections held open by scenario 6
    last_command: list[str] = field(default_factory=list)  # to tell how to reproduce a failure
    _serial: Iterator[int] = field(default_factory=itertools.count)

    def name(self, prefix: str) -> str:
        """A queue or exchange name used by one run only, so leftovers never meet a later run."""
        return f"bench-{prefix}-{next(self._serial)}"


@dataclass(frozen=True)
class Metric:
    name: str
    higher_is_better: bool | None = True  # None: a fact to read beside the others, not a score


@dataclass
class Sample:
    metrics: dict[str, float]
    messages: int  # what the CPU figures are divided by (0: not a per-message scenario)
    wall: float  # seconds the CPU figures cover
    loadgen_cpu: float
    broker_cpu: float
    broker_written: int  # bytes the broker sent to storage
    errors: list[str]
    raw: dict[str, Any]
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Window:
    """One load generator run: its result, and what the broker did between its go and end marks."""

    result: dict[str, Any]
    wall: float
    broker_cpu: float  # seconds
    broker_written: int  # bytes sent to storage


Measure = Callable[[Broker, Context], Sample]


@dataclass(frozen=True)
class Case:
    scenario: int
    label: str
    metrics: tuple[Metric, ...]
    measure: Measure
    fresh_broker: bool = False  # memory figures need a broker nothing else has run on


def _run(broker: Broker, ctx: Context, args: list[str], seconds: float) -> Window:
    ctx.last_command = [str(ctx.loadgen), "--port", str(broker.port), *args]
    marks: dict[str, tuple[float, float, int]] = {}

    def on_mark(mark: str) -> None:
        marks[mark] = (time.monotonic(), cpu_seconds(broker.pid), written_bytes(broker.pid))

    result = loadgen.run(ctx.loadgen, broker.port, args, seconds, on_mark)
    if set(marks) != {"go", "end"}:
        raise loadgen.LoadgenError(f"loadgen ended without a measured window: {'; '.join(result['errors'])}")
    (wall_go, cpu_go, written_go), (wall_end, cpu_end, written_end) = marks["go"], marks["end"]
    return Window(result, wall_end - wall_go, cpu_end - cpu_go, written_end - written_go)


def _sample(window: Window, metrics: dict[str, float], messages: int) -> Sample:
    result = window.result
    loadgen_cpu = result["cpu_user"] + result["cpu_sys"]
    return Sample(metrics, messages, window.wall, loadgen_cpu, window.broker_cpu, window.broker_written,
                  list(result["errors"]), result)


def throughput(prefix: str, args: list[str], rates: dict[str, str], exchange: bool = False) -> Measure:
    """Run for ctx.duration; each metric is a count from the result (rates: name -> key) per second."""

    def measure(broker: Broker, ctx: Context) -> Sample:
        run_args = [*CONSUMING, *args, "--duration", str(ctx.duration), "--queue", ctx.name(prefix),
                    "--cleanup"]
        if exchange:
            run_args += ["--exchange", ctx.name(f"{prefix}-x")]
        window = _run(broker, ctx, run_args, ctx.duration)
        elapsed = max(window.result["elapsed"], 1e-9)
        metrics = {name: window.result[key] / elapsed for name, key in rates.items()}
        return _sample(window, metrics, window.result["delivered"])

    return measure


def persistent(broker: Broker, ctx: Context) -> Sample:
    """Scenario 2, plus the bytes the broker wrote to disk per message: proof of where the messages went."""
    args = ["--mode", "both", "--persistent", "--durable", "--confirm", str(CONFIRM_WINDOW)]
    rates = {"confirmed/s": "confirmed", "delivered/s": "delivered"}
    sample = throughput("persistent", args, rates)(broker, ctx)
    per_message = sample.broker_written / max(sample.raw["published"], 1)
    sample.metrics["disk bytes/msg"] = per_message
    if broker.kind == "leveret" and per_message < NO_DISK_WRITES:
        sample.notes.append(NO_DISK_STORE)
    return sample


def latency(broker: Broker, ctx: Context) -> Sample:
    args = [*CONSUMING, "--mode", "both", "--rate", str(LATENCY_RATE), "--warmup", str(ctx.warmup),
            "--duration", str(ctx.duration), "--queue", ctx.name("latency"), "--cleanup"]
    window = _run(broker, ctx, args, ctx.duration)
    lat = window.result["latency_us"]
    metrics = {} if lat is None else {"p50 ms": lat["p50"] / 1000, "p99 ms": lat["p99"] / 1000,
                                      "p99.9 ms": lat["p999"] / 1000}
    sample = _sample(window, metrics, window.result["delivered"])
    expected = LATENCY_RATE * (ctx.duration - ctx.warmup)
    received = lat["samples"] if lat else 0
    if received < 0.9 * expected:
        sample.errors.append(f"only {received} of ~{expected:.0f} messages arrived after the warm-up")
    return sample


def queued_memory(broker: Broker, ctx: Context) -> Sample:
    """RSS growth per transient message left in a queue with no consumer (confirms: all are enqueued)."""
    count = ctx.queued_count
    time.sleep(SETTLE)
    before = rss_bytes(broker.pid)
    args = ["--mode", "produce", "--body", str(BODY), "--count", str(count), "--confirm", str(CONFIRM_WINDOW),
            "--duration", str(FILL_LIMIT), "--queue", ctx.name("queued")]
    window = _run(broker, ctx, args, FILL_LIMIT)
    time.sleep(SETTLE)
    growth = rss_bytes(broker.pid) - before
    sample = _sample(window, {"bytes/msg": growth / count}, window.result["published"])
    if window.result["queued"] != count:
        sample.errors.append(f"queue holds {window.result['queued']} messages, expected {count}")
    return sample


def connection_memory(broker: Broker, ctx: Context) -> Sample:
    """RSS growth per idle connection (each with one open channel, no heartbeats)."""
    count = ctx.idle_connections
    time.sleep(SETTLE)
    before = rss_bytes(broker.pid)
    ctx.last_command = [str(ctx.loadgen), "--port", str(broker.port), "--mode", "idle",
                        "--connections", str(count)]
    started = time.monotonic()
    with loadgen.idle_connections(ctx.loadgen, broker.port, count, FILL_LIMIT) as result:
        time.sleep(SETTLE)
        growth = rss_bytes(broker.pid) - before
    opened = result["connections"]
    # Proof that the broker could open them all: RabbitMQ's own cap follows this limit.
    result["broker_open_files_limit"] = open_files_limit(broker.pid)
    window = Window(result, time.monotonic() - started, broker_cpu=0.0, broker_written=0)
    sample = _sample(window, {"KiB/conn": growth / max(opened, 1) / 1024}, messages=0)
    if opened != count:
        sample.errors.append(f"opened {opened} of {count} connections")
    return sample


def max_backlog(consumers: int) -> int:
    """Scenario 7 is a closed loop: producers wait while this many messages are published, not delivered.

    Open loop, the backlog grows without bound and the curve would measure a broker drowning, not its
    throughput. The bound leaves each consumer several ack batches in flight, so it never waits on it.
    """
    return max(MIN_BACKLOG, 4 * ACK_EVERY * consumers)


def cases() -> list[Case]:
    both = ["--mode", "both"]
    fanout = [*both, "--exchange-type", "fanout", "--queues", str(FANOUT_QUEUES),
              "--consumers", str(FANOUT_QUEUES)]
    flow = {"published/s": "published", "delivered/s": "delivered"}
    listed = [
        Case(1, "transient 1 producer -> 1 consumer", (Metric("published/s"), Metric("delivered/s")),
             throughput("transient", both, flow)),
        Case(2, "persistent, confirms (1000 in flight), durable queue",
             (Metric("confirmed/s"), Metric("delivered/s"), Metric("disk bytes/msg", higher_is_better=None)),
             persistent),
        Case(3, f"latency at {LATENCY_RATE} msg/s",
             tuple(Metric(f"{p} ms", higher_is_better=False) for p in ("p50", "p99", "p99.9")), latency),
        Case(4, f"fanout to {FANOUT_QUEUES} queues, {FANOUT_QUEUES} consumers", (Metric("delivered/s"),),
             throughput("fanout", fanout, {"delivered/s": "delivered"}, exchange=True)),
        Case(5, "memory per queued transient message", (Metric("bytes/msg", higher_is_better=False),),
             queued_memory, fresh_broker=True),
        Case(6, "memory per idle connection", (Metric("KiB/conn", higher_is_better=False),),
             connection_memory, fresh_broker=True),
    ]
    for queues in QUEUE_POINTS:
        args = [*both, "--queues", str(queues), "--max-backlog", str(max_backlog(1))]
        listed.append(Case(7, f"{queues} queue(s), 1 producer -> 1 consumer", (Metric("delivered/s"),),
                           throughput(f"queues{queues}", args, {"delivered/s": "delivered"})))
    for clients in CLIENT_POINTS:
        args = [*both, "--producers", str(clients), "--consumers", str(clients),
                "--max-backlog", str(max_backlog(clients))]
        label = f"{clients} producer(s) + {clients} consumer(s), 1 queue"
        listed.append(Case(7, label, (Metric("delivered/s"),),
                           throughput(f"clients{clients}", args, {"delivered/s": "delivered"})))
    return listed
