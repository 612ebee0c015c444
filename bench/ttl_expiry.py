"""Fill a queue with N messages that have a TTL, then let the node's real timer task (trio) expire them.

    python bench/ttl_expiry.py [--count 1000000] [--ttl 10] [--body 256] [--dead-letter]

Reports the CPU spent while the messages wait (one timer per queue: it should be nothing), the time and CPU
to expire them all once due, in how many timer batches, and how late the event loop ran meanwhile (its
longest stall, which is what connections would feel). --dead-letter republishes each expired message to a
dead-letter queue through a fanout exchange (x-death header and all) instead of dropping it.
"""

from __future__ import annotations

import argparse
import resource
import time
from typing import Any

import trio

from leveret.amqp.properties import EMPTY_PROPERTIES_RAW
from leveret.broker.message import Message
from leveret.broker.node import Node
from leveret.broker.queues.queue import Queue
from leveret.broker.server.timers import run_timers
from leveret.broker.vhost import VirtualHost
from leveret.config import Config

PROBE_INTERVAL = 0.001  # the stall probe asks to wake every millisecond


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def probe_stalls(worst: list[float]) -> None:
    """Record the longest lateness of a 1 ms sleep: how long the timer work kept the loop busy."""
    while True:
        asked = trio.current_time() + PROBE_INTERVAL
        await trio.sleep_until(asked)
        worst[0] = max(worst[0], trio.current_time() - asked)


def declare(vhost: VirtualHost, name: str, arguments: dict[str, Any]) -> Queue:
    return vhost.declare_queue(
        name, owner=None, durable=False, exclusive=False, auto_delete=False, arguments=arguments
    )


async def bench(count: int, ttl_s: float, body_size: int, dead_letter: bool) -> None:
    node = Node(Config(), clock=trio.current_time)
    vhost = node.vhosts["/"]
    arguments: dict[str, Any] = {"x-message-ttl": int(ttl_s * 1000)}
    if dead_letter:
        exchange = vhost.declare_exchange(
            "bench-dlx", "fanout", durable=False, auto_delete=False, internal=False, arguments={}
        )
        vhost.bind(exchange, declare(vhost, "bench-dead", {}), "", {})
        arguments["x-dead-letter-exchange"] = "bench-dlx"
    queue = declare(vhost, "bench-ttl", arguments)
    body = bytes(body_size)
    async with trio.open_nursery() as nursery:
        await nursery.start(run_timers, node)
        rss_before = rss_mib()
        started, cpu = time.perf_counter(), time.process_time()
        for _ in range(count):
            queue.enqueue(Message("", "bench-ttl", EMPTY_PROPERTIES_RAW, body))
        fill_s, fill_cpu = time.perf_counter() - started, time.process_time() - cpu
        print(f"fill: {count:,} messages ({body_size} B bodies, TTL {ttl_s:g} s) in {fill_s:.2f} s, "
              f"{fill_cpu / count * 1e6:.2f} µs CPU each; max RSS +{rss_mib() - rss_before:.0f} MiB")
        first_expiry = queue.ready.next_expiry()
        if first_expiry is None or first_expiry <= trio.current_time():
            raise SystemExit("--ttl must be longer than the fill took")

        waited_from, cpu = trio.current_time(), time.process_time()
        await trio.sleep_until(first_expiry - 0.05)
        wait_s, wait_cpu = trio.current_time() - waited_from, time.process_time() - cpu
        print(f"waiting: {wait_s:.2f} s with {queue.message_count:,} messages queued, "
              f"{wait_cpu * 1000:.1f} ms CPU")

        worst = [0.0]
        nursery.start_soon(probe_stalls, worst)
        calls = 0
        on_deadline = queue.on_deadline

        def counted(now: float) -> None:
            nonlocal calls
            calls += 1
            on_deadline(now)

        queue.on_deadline = counted  # type: ignore[method-assign]
        started, cpu = time.perf_counter(), time.process_time()
        while queue.message_count:
            await trio.sleep(0.01)
        expire_s, expire_cpu = time.perf_counter() - started, time.process_time() - cpu
        print(f"expiry: {count:,} messages gone {expire_s:.2f} s after the first was due "
              f"(they came due over {fill_s:.2f} s), {expire_cpu:.2f} s CPU = "
              f"{expire_cpu / count * 1e6:.2f} µs per message, in {calls:,} timer calls; "
              f"longest event-loop stall {worst[0] * 1000:.1f} ms")
        if dead_letter:
            print(f"dead-lettered: {vhost.queues['bench-dead'].message_count:,} messages in bench-dead")
        nursery.cancel_scope.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--ttl", type=float, default=10.0, help="seconds (must exceed the fill time)")
    parser.add_argument("--body", type=int, default=256, help="body size in bytes")
    parser.add_argument("--dead-letter", action="store_true", help="dead-letter expired messages")
    args = parser.parse_args()
    trio.run(bench, args.count, args.ttl, args.body, args.dead_letter)


if __name__ == "__main__":
    main()
