"""Run each case on every broker, alternating which goes first, and catch crashes and hangs as findings."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

from bench.loadgen import LoadgenError
from bench.scenarios import Case, Context, Sample
from bench.targets import Target
from interop.brokers import Broker, BrokerStartError, amqp_ready

# Between two runs, so that one run's teardown (queue deletion, garbage collection) is not the next's load.
PAUSE = 1.0


@dataclass
class Measurement:
    kind: str
    repeat: int
    sample: Sample | None
    error: str | None  # the broker crashed or hung, or the run could not be made


def _unfit(broker: Broker) -> str | None:
    """Why the broker cannot take the next run (it crashed or hangs), or None."""
    if not broker.running:
        return f"{broker.kind} exited with code {broker.stop()}\n{broker.diagnostics()}"
    if not amqp_ready(broker.host, broker.port):
        return f"{broker.kind} is running but no longer answers the AMQP header\n{broker.diagnostics()}"
    return None


def _measure_on(case: Case, broker: Broker, ctx: Context) -> tuple[Sample | None, str | None]:
    try:
        sample = case.measure(broker, ctx)
        error = None
    except (LoadgenError, OSError) as exc:
        sample, error = None, str(exc)
    unfit = _unfit(broker)
    if unfit:
        error = f"{error}\n{unfit}" if error else unfit
    if error:
        start = " ".join(broker.command()) if broker.kind == "leveret" else "interop.brokers.RabbitMQBroker"
        error += f"\nreproduce: {start} on port {broker.port}, then: {' '.join(ctx.last_command)}"
    return sample, error


def measure(case: Case, target: Target, ctx: Context, repeat: int) -> Measurement:
    try:
        if case.fresh_broker:
            with target.fresh() as broker:
                sample, error = _measure_on(case, broker, ctx)
        else:
            broker = target.shared()
            sample, error = _measure_on(case, broker, ctx)
            if error and not (broker.running and amqp_ready(broker.host, broker.port)):
                target.discard_shared()
    except BrokerStartError as exc:
        sample, error = None, str(exc)
    return Measurement(target.kind, repeat, sample, error)


def _progress(case: Case, measurement: Measurement) -> None:
    head = f"  [{case.scenario}] {case.label} #{measurement.repeat + 1} {measurement.kind}:"
    if measurement.sample is None:
        print(f"{head} FAILED: {measurement.error}", file=sys.stderr, flush=True)
        return
    figures = ", ".join(f"{name} {value:,.2f}" for name, value in measurement.sample.metrics.items())
    problems = "; ".join(measurement.sample.errors + ([measurement.error] if measurement.error else []))
    print(f"{head} {figures}" + (f"  !! {problems}" if problems else ""), file=sys.stderr, flush=True)


def run_case(case: Case, targets: list[Target], ctx: Context, repeats: int) -> list[Measurement]:
    measurements = []
    for repeat in range(repeats):
        # Alternate who goes first, so a drift in the machine's load does not favour one broker.
        order = targets if repeat % 2 == 0 else targets[::-1]
        for target in order:
            measurement = measure(case, target, ctx, repeat)
            _progress(case, measurement)
            measurements.append(measurement)
            time.sleep(PAUSE)
    return measurements
