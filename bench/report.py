"""Summaries (medians, per-repeat ratios), the table, the run's environment and the JSON record."""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import statistics
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from bench.runner import Measurement
from bench.scenarios import Metric, Sample

KINDS = ("leveret", "rabbitmq")


class Case(Protocol):
    """What the report needs of a case: the single-node scenarios' and the cluster benches' (bench.replicated,
    bench.cluster_scaling)."""

    @property
    def scenario(self) -> int: ...
    @property
    def label(self) -> str: ...
    @property
    def metrics(self) -> tuple[Metric, ...]: ...


@dataclass
class Row:
    case: Case
    metric: str
    higher_is_better: bool | None
    values: dict[str, list[float]]  # kind -> one value per successful repeat
    ratios: list[float]  # Leveret / RabbitMQ, one per repeat where both succeeded
    cpu: dict[str, dict[str, float]]  # kind -> loadgen_us, broker_cores, broker_us (medians)


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _clean(m: Measurement) -> Sample | None:
    """The sample of a run that went right; failed runs stay out of every figure."""
    return m.sample if m.sample is not None and not m.sample.errors and m.error is None else None


def _cpu(measurements: list[Measurement]) -> dict[str, float]:
    samples = [sample for m in measurements if (sample := _clean(m)) is not None]
    figures: dict[str, list[float]] = {"loadgen_us": [], "broker_cores": [], "broker_us": []}
    for sample in samples:
        if sample.messages:
            figures["loadgen_us"].append(sample.loadgen_cpu / sample.messages * 1e6)
            figures["broker_us"].append(sample.broker_cpu / sample.messages * 1e6)
            figures["broker_cores"].append(sample.broker_cpu / sample.wall)
    return {name: median for name, values in figures.items() if (median := _median(values)) is not None}


def summarize(case: Case, measurements: list[Measurement]) -> list[Row]:
    by_kind = {kind: [m for m in measurements if m.kind == kind] for kind in KINDS}
    rows = []
    for metric in case.metrics:
        values: dict[str, list[float]] = {kind: [] for kind in KINDS}
        per_repeat: dict[int, dict[str, float]] = {}
        for m in measurements:
            sample = _clean(m)
            if sample is not None and metric.name in sample.metrics:
                value = sample.metrics[metric.name]
                values[m.kind].append(value)
                per_repeat.setdefault(m.repeat, {})[m.kind] = value
        ratios = [pair["leveret"] / pair["rabbitmq"] for pair in per_repeat.values()
                  if "leveret" in pair and pair.get("rabbitmq")]
        cpu = {kind: _cpu(ms) for kind, ms in by_kind.items() if ms}
        rows.append(Row(case, metric.name, metric.higher_is_better, values, ratios, cpu))
    return rows


def _fmt(value: float | None) -> str:
    if value is None or value != value:  # None or NaN
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _pair(cpu: dict[str, dict[str, float]], key: str) -> str:
    return " / ".join(_fmt(cpu.get(kind, {}).get(key)) for kind in KINDS)


def table(rows: list[Row]) -> str:
    """A Markdown table; CPU columns are per case, so they appear on its first metric row only."""
    lines = [
        "| # | case | metric | Leveret | RabbitMQ | Leveret/RabbitMQ | loadgen µs/msg L / R "
        "| broker cores L / R | broker µs/msg L / R |",
        "|---|---|---|--:|--:|--:|--:|--:|--:|",
    ]
    previous = None
    for row in rows:
        first = row.case is not previous
        previous = row.case
        ratio = _fmt(_median(row.ratios))
        if len(row.ratios) > 1:
            ratio += f" ({_fmt(min(row.ratios))}–{_fmt(max(row.ratios))})"
        better = {True: "↑", False: "↓", None: "·"}[row.higher_is_better]
        cpu = [_pair(row.cpu, key) if first else "" for key in ("loadgen_us", "broker_cores", "broker_us")]
        head = [str(row.case.scenario), row.case.label] if first else ["", ""]
        medians = [_fmt(_median(row.values[kind])) for kind in KINDS]
        cells = [*head, f"{row.metric} {better}", *medians, ratio, *cpu]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def findings(cases: Sequence[Case], results: dict[int, list[Measurement]]) -> list[str]:
    """Notes and every failure, with how to reproduce it."""
    out = []
    for index, case in enumerate(cases):
        notes = dict.fromkeys(note for m in results[index] if m.sample for note in m.sample.notes)
        out += [f"[{case.scenario}] {case.label}: {note}" for note in notes]
        for m in results[index]:
            problems = (m.sample.errors if m.sample else []) + ([m.error] if m.error else [])
            for problem in problems:
                out.append(f"[{case.scenario}] {case.label}, repeat {m.repeat + 1}, {m.kind}: {problem}")
    return out


def _output(command: list[str]) -> str:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def environment(argv: list[str], extra: dict[str, Any], program: str = "python -m bench") -> dict[str, Any]:
    root = Path(__file__).resolve().parent.parent
    commit = _output(["git", "-C", str(root), "rev-parse", "--short", "HEAD"])
    dirty = _output(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"])
    return {
        "started": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "command": " ".join([program, *argv]),
        "nproc": _output(["nproc"]),
        "free -h": _output(["free", "-h"]),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "leveret commit": commit + (" (work tree modified)" if dirty else ""),
        "rabbitmq-server": _output(["dpkg-query", "-W", "-f", "${Version}", "rabbitmq-server"]),
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        **extra,
    }


def write_json(path: Path, env: dict[str, Any], cases: Sequence[Case], results: dict[int, list[Measurement]],
               rows: list[Row]) -> None:
    def case_record(index: int, case: Case) -> dict[str, Any]:
        return {
            "scenario": case.scenario,
            "label": case.label,
            "measurements": [dataclasses.asdict(m) for m in results[index]],
        }

    summary = [{
        "scenario": row.case.scenario, "label": row.case.label, "metric": row.metric,
        "higher_is_better": row.higher_is_better, "values": row.values, "ratios": row.ratios,
        "ratio_median": _median(row.ratios), "cpu": row.cpu,
    } for row in rows]
    record = {"environment": env, "summary": summary,
              "cases": [case_record(i, case) for i, case in enumerate(cases)]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")
