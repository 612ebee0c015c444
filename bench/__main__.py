"""Leveret against RabbitMQ: the same scenarios on both, alternated and repeated, reported as ratios."""

from __future__ import annotations

import argparse
import datetime
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.pyspy import profile
from bench.report import environment, findings, summarize, table, write_json
from bench.runner import Measurement, run_case
from bench.scenarios import Context, cases
from bench.targets import Target
from bench.toolchain import prepare

RESULTS = Path(__file__).with_name("results")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a short smoke run (~2 s per run, 1 repeat)")
    parser.add_argument("--scenarios", default="1,2,3,4,5,6,7", help="comma-separated scenario numbers")
    parser.add_argument("--repeat", type=int, help="runs per broker and case (default 3; 1 with --quick)")
    parser.add_argument("--json", type=Path, help="results file (default: bench/results/bench-<time>.json)")
    parser.add_argument("--profile", type=float, nargs="?", const=10.0, metavar="SECONDS",
                        help="then profile Leveret with py-spy under scenario 1's load (default 10 s)")
    args = parser.parse_args(argv)
    try:
        args.scenarios = {int(part) for part in args.scenarios.split(",") if part.strip()}
    except ValueError:
        parser.error(f"--scenarios takes numbers like 1,3, not {args.scenarios!r}")
    known = {case.scenario for case in cases()}
    if not args.scenarios or not args.scenarios <= known:
        parser.error(f"--scenarios: choose among {', '.join(map(str, sorted(known)))}")
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    return args


def context(binary: Path, quick: bool) -> Context:
    if quick:
        return Context(binary, duration=2.0, warmup=0.5, queued_count=100_000, idle_connections=300)
    return Context(binary, duration=10.0, warmup=1.0, queued_count=500_000, idle_connections=1000)


def main(argv: list[str]) -> int:
    args = parse(argv)
    tools = prepare("bench")
    if tools is None:
        return 2
    ctx = context(tools.loadgen, args.quick)
    selected = [case for case in cases() if case.scenario in args.scenarios]
    root = Path(tempfile.mkdtemp(prefix="leveret-bench-"))
    targets = [Target("leveret", root)]
    if tools.rabbitmq:
        targets.append(Target("rabbitmq", root, tools.rabbitmq))
    env = environment(argv, {"open files limit (bench, brokers, loadgen)": tools.nofile,
                             "repeats": args.repeat, "seconds per run": ctx.duration,
                             "loadgen": str(tools.loadgen)})
    results: dict[int, list[Measurement]] = {}
    profiled = ""
    try:
        for index, case in enumerate(selected):
            print(f"== [{case.scenario}] {case.label}", file=sys.stderr, flush=True)
            results[index] = run_case(case, targets, ctx, args.repeat)
        if args.profile:
            print(f"== py-spy on Leveret, scenario 1, {args.profile:.0f} s", file=sys.stderr, flush=True)
            try:
                profiled = profile(targets[0].shared(), ctx, args.profile)
            except (OSError, RuntimeError, subprocess.CalledProcessError) as exc:
                profiled = f"Profiling failed: {exc}"
    finally:
        for target in targets:
            target.close()

    rows = [row for index, case in enumerate(selected) for row in summarize(case, results[index])]
    problems = findings(selected, results)
    print("\n".join(f"- {key}: {value}" if "\n" not in str(value) else f"- {key}:\n```\n{value}\n```"
                    for key, value in env.items()))
    print()
    print(table(rows))
    if problems:
        print("\nNotes and failures:\n" + "\n".join(f"- {line}" for line in problems))
    if profiled:
        print("\n" + profiled)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = args.json or RESULTS / f"bench-{stamp}.json"
    write_json(path, env, selected, results, rows)
    print(f"\nJSON: {path}")
    failed = any(m.error or (m.sample and m.sample.errors) for ms in results.values() for m in ms)
    if failed:
        print(f"Broker logs kept in {root}", file=sys.stderr)
    else:
        shutil.rmtree(root, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
