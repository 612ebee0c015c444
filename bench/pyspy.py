"""Where Leveret spends its CPU in scenario 1: py-spy samples summed by innermost frame (own time)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench import loadgen
from bench.scenarios import CONSUMING, Context
from interop.brokers import Broker

RATE = 100  # samples per second; each pauses the broker for a moment, so not more
# The load runs this much longer than the profile on each side, so py-spy sees only steady state.
MARGIN = 2.0


def py_spy() -> str:
    # Also beside this interpreter: a venv's scripts are not on PATH when it is run as .venv/bin/python.
    beside = str(Path(sys.executable).parent)
    found = shutil.which("py-spy") or shutil.which("py-spy", path=beside)
    if found is None:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "py-spy"], check=True)
        found = shutil.which("py-spy") or shutil.which("py-spy", path=beside)
    if found is None:
        raise RuntimeError("py-spy is not on PATH after `pip install py-spy`")
    return found


def own_time(raw: str) -> Counter[str]:
    """Collapsed stacks ("outer (file:line);...;leaf (file:line) COUNT") to samples per leaf function."""
    counts: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        leaf = stack.rsplit(";", 1)[-1]
        name, _, where = leaf.partition(" (")
        counts[f"{name} ({where.rsplit(':', 1)[0]})" if where else name] += int(count)
    return counts


def profile(broker: Broker, ctx: Context, seconds: float, top: int = 15) -> str:
    """Profile the broker under scenario 1's load; returns a Markdown table of the top functions."""
    spy = py_spy()
    args = [*CONSUMING, "--mode", "both", "--duration", str(seconds + 2 * MARGIN),
            "--queue", ctx.name("profile"), "--cleanup"]
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(1) as pool:
        output = Path(tmp) / "profile.txt"
        load = pool.submit(loadgen.run, ctx.loadgen, broker.port, args, seconds + 2 * MARGIN)
        time.sleep(MARGIN)
        # Not --nonblocking: stacks read from a running process are torn (in a trial, next_event got 3x
        # the share a blocking profile gives it). Not --idle: trio's idle worker thread would take half
        # the samples; a thread inside a non-blocking send or recv still counts as busy.
        subprocess.run([spy, "record", "--pid", str(broker.pid), "--duration", str(int(seconds)), "--rate",
                        str(RATE), "--format", "raw", "-o", str(output)],
                       check=True, capture_output=True)
        result = load.result()
        counts = own_time(output.read_text())
    total = sum(counts.values())
    delivered = result["delivered"] / max(result["elapsed"], 1e-9)
    lines = [
        f"py-spy, {RATE} Hz for {int(seconds)} s on Leveret (pid {broker.pid}) under scenario 1 "
        f"({delivered:,.0f} delivered/s over the profiled run); {total} samples with the broker busy, "
        f"{total / (RATE * int(seconds)):.0%} of the time.",
        "",
        "| own samples | % | function (file) |",
        "|--:|--:|---|",
    ]
    lines += [f"| {n} | {n / total:.1%} | `{name}` |" for name, n in counts.most_common(top)]
    return "\n".join(lines)
