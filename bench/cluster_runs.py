"""What the cluster benches share: their cases, load generator windows over a whole cluster (CPU summed over
its nodes), alternated repeats on a Leveret and a RabbitMQ cluster, and the printed report (bench/report.py's
table: medians and Leveret/RabbitMQ ratios)."""

from __future__ import annotations

import datetime
import itertools
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pika.exceptions

from bench import loadgen
from bench.clusters import BenchCluster
from bench.procfs import cpu_seconds
from bench.report import findings, summarize, table, write_json
from bench.runner import Measurement
from bench.scenarios import Metric, Sample

RESULTS = Path(__file__).with_name("results")
# Between two runs, so that one run's teardown is not the next one's load.
PAUSE = 1.0
HOST = "127.0.0.1"


@dataclass
class Settings:
    loadgen: Path
    duration: float
    warmup: float
    last_command: list[str] = field(default_factory=list)
    _serial: Iterator[int] = field(default_factory=itertools.count)

    def name(self, prefix: str) -> str:
        """A queue or exchange name for one run only."""
        return f"bench-{prefix}-{os.getpid()}-{next(self._serial)}"


@dataclass(frozen=True)
class ClusterCase:
    scenario: int
    label: str
    metrics: tuple[Metric, ...]
    measure: Callable[[BenchCluster, Settings], Sample]


def cpu_of(pids: list[int]) -> dict[int, float]:
    """CPU seconds of each process still alive (a killed node drops out)."""
    seconds = {}
    for pid in pids:
        try:
            seconds[pid] = cpu_seconds(pid)
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
    return seconds


def hosts(cluster: BenchCluster, indexes: list[int]) -> str:
    """The load generator's --hosts: where its connections go, the first first (producers fail over to the
    next ones)."""
    return ",".join(f"{HOST}:{cluster.port(index)}" for index in indexes)


@dataclass
class Window:
    result: dict[str, Any]
    wall: float
    broker_cpu: float  # seconds, summed over the nodes alive at both marks
    marks: dict[str, int]  # mark -> CLOCK_MONOTONIC ns when the bench read it
    # CPU seconds between the marks of each node alive at both (by index) and of the cluster's helper
    # processes (etcd, by name)
    node_cpu: dict[int, float] = field(default_factory=dict)
    helper_cpu: dict[str, float] = field(default_factory=dict)


def run_window(cluster: BenchCluster, settings: Settings, args: list[str], seconds: float,
               on_go: Callable[[], None] = lambda: None) -> Window:
    """One load generator run (its first --hosts entry is where it connects); on_go runs at the go mark."""
    settings.last_command = [str(settings.loadgen), *args]
    pids = cluster.pids()
    nodes = {pid: index for index in cluster.live() if (pid := cluster.pid(index)) is not None}
    helpers = {pid: name for name, pid in cluster.helper_pids().items()}
    cpu: dict[str, dict[int, float]] = {}
    marks: dict[str, int] = {}

    def on_mark(mark: str) -> None:
        marks[mark] = time.monotonic_ns()
        cpu[mark] = cpu_of([*pids, *helpers])
        if mark == "go":
            on_go()

    result = loadgen.run(settings.loadgen, cluster.port(0), args, seconds, on_mark)
    if set(marks) != {"go", "end"}:
        raise loadgen.LoadgenError(f"loadgen ended without a measured window: {'; '.join(result['errors'])}")
    used = {pid: cpu["end"][pid] - cpu["go"][pid] for pid in cpu["go"].keys() & cpu["end"].keys()}
    broker_cpu = sum(used.get(pid, 0.0) for pid in pids)
    return Window(result, (marks["end"] - marks["go"]) / 1e9, broker_cpu, marks,
                  {index: used[pid] for pid, index in nodes.items() if pid in used},
                  {name: used[pid] for pid, name in helpers.items() if pid in used})


def sample(window: Window, metrics: dict[str, float], messages: int) -> Sample:
    result = window.result
    loadgen_cpu = result["cpu_user"] + result["cpu_sys"]
    errors = list(result["errors"])
    return Sample(metrics, messages, window.wall, loadgen_cpu, window.broker_cpu, 0, errors, result)


FAILURES = (loadgen.LoadgenError, OSError, RuntimeError, TimeoutError, httpx.HTTPError,
            pika.exceptions.AMQPError)


def measure(case: ClusterCase, cluster: BenchCluster, settings: Settings, repeat: int) -> Measurement:
    try:
        return Measurement(cluster.kind, repeat, case.measure(cluster, settings), None)
    except FAILURES as exc:
        command = " ".join(settings.last_command)
        why = f"{type(exc).__name__}: {exc}\nlast loadgen: {command}"
        return Measurement(cluster.kind, repeat, None, why)


def progress(case: ClusterCase, measurement: Measurement) -> None:
    head = f"  [{case.scenario}] {case.label} #{measurement.repeat + 1} {measurement.kind}:"
    if measurement.sample is None:
        print(f"{head} FAILED: {measurement.error}", file=sys.stderr, flush=True)
        return
    figures = ", ".join(f"{name} {value:,.3f}" for name, value in measurement.sample.metrics.items())
    problems = "; ".join(measurement.sample.errors + measurement.sample.notes)
    print(f"{head} {figures}" + (f"  !! {problems}" if problems else ""), file=sys.stderr, flush=True)


def run_case(case: ClusterCase, clusters: list[BenchCluster], settings: Settings,
             repeats: int) -> list[Measurement]:
    """Every repeat on every cluster, alternating which goes first (L R, R L, ...)."""
    measurements = []
    for repeat in range(repeats):
        for cluster in clusters if repeat % 2 == 0 else clusters[::-1]:
            measurement = measure(case, cluster, settings, repeat)
            progress(case, measurement)
            measurements.append(measurement)
            time.sleep(PAUSE)
    return measurements


def report(env: dict[str, Any], cases: list[ClusterCase], results: dict[int, list[Measurement]],
           stem: str) -> int:
    """Print the environment (`environment()` taken at the start), the table and the notes; write the JSON
    record; 1 if a run failed."""
    env = {**env, "load average at the end": " ".join(f"{x:.2f}" for x in os.getloadavg())}
    rows = [row for index, case in enumerate(cases) for row in summarize(case, results[index])]
    print("\n".join(f"- {key}: {value}" if "\n" not in str(value) else f"- {key}:\n```\n{value}\n```"
                    for key, value in env.items()))
    print()
    print(table(rows))
    problems = findings(cases, results)
    if problems:
        print("\nNotes and failures:\n" + "\n".join(f"- {line}" for line in problems))
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = RESULTS / f"{stem}-{stamp}.json"
    write_json(path, env, cases, results, rows)
    print(f"\nJSON: {path}")
    return 1 if any(m.error or (m.sample and m.sample.errors) for ms in results.values() for m in ms) else 0
