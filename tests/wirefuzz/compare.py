"""Run the same fuzz cases against two brokers and show where their answers differ.

    python -m tests.wirefuzz.compare --count 2000 LEVERET_PORT RABBITMQ_PORT

Each case runs on both (one after the other, same bytes); cases whose outcome signatures differ are
grouped by the pair of signatures, with the mutations and bytes of the first few. With one port it only
prints the histogram. Answers that depend on state other connections left (queues, bindings) may differ
by chance: rerun a group's bytes alone before trusting it.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

from hypothesis import HealthCheck, Phase, given, seed, settings

from tests.wirefuzz.cases import Case, cases
from tests.wirefuzz.runner import Outcome, Tally, run_cases


def sample_cases(count: int, random_seed: int = 0, max_mutations: int = 4) -> list[Case]:
    """`count` cases drawn by hypothesis (no shrinking, no database), repeatable by seed."""
    collected: list[Case] = []

    @seed(random_seed)
    @settings(
        max_examples=count,
        database=None,
        phases=[Phase.generate],
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(cases(max_mutations=max_mutations))
    def collect(case: Case) -> None:
        collected.append(case)

    collect()
    return collected


def describe(outcome: Outcome) -> str:
    case = outcome.case
    close = outcome.connection_close
    return (
        f"    {case.session} {case.handshake} {case.mutations} chunk={case.chunk}\n"
        f"      close={close} channel_closes={outcome.channel_closes}\n"
        f"      bytes={case.payload().hex()[:600]}"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("ports", type=int, nargs="+")
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", type=float, default=1.0)
    parser.add_argument("--show", type=int, default=3)
    parser.add_argument("--max-mutations", type=int, default=4)
    args = parser.parse_args()
    sample = sample_cases(args.count, args.seed, args.max_mutations)
    runs = []
    for port in args.ports:
        outcomes = run_cases("127.0.0.1", port, sample, quiet=args.quiet)
        outcomes.sort(key=lambda o: sample.index(o.case))
        tally = Tally()
        tally.add(outcomes)
        print(f"--- port {port}\n{tally.report()}")
        runs.append(outcomes)
    if len(runs) == 2:
        groups: dict[tuple[str, str], list[tuple[Outcome, Outcome]]] = defaultdict(list)
        for a, b in zip(*runs, strict=True):
            if a.signature() != b.signature():
                groups[(a.signature(), b.signature())].append((a, b))
        for (sig_a, sig_b), pairs in sorted(groups.items(), key=lambda item: -len(item[1])):
            print(f"\n{len(pairs)}x  {sig_a}   <->   {sig_b}")
            for a, b in pairs[: args.show]:
                print(describe(a))
                print(describe(b).split("\n")[1])


if __name__ == "__main__":
    main()
