"""Throughput of one peer link between two node processes on loopback (the receiver in a child process).

- `1 KiB requests, pipelined`: each 1 KiB message is one request; the sender keeps submitting while the
  window (8 MiB unanswered) allows, and the link's writer flushes whatever queued meanwhile in one write;
- `batches of N x 1 KiB`: N messages in one request (as a replication batch of entries would be);
- `round trip`: one 1 KiB request at a time, its reply awaited.

    python -m bench.peer_link              # 200,000 messages per figure
    python -m bench.peer_link 50000
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

import trio

from leveret.broker.server.local_cluster import free_ports
from leveret.broker.server.peers import PeerLinks

CLUSTER = "bench"
BODY = b"x" * 1024


def _addresses(ports: list[int]) -> dict[str, tuple[str, int]]:
    return {"node1": ("127.0.0.1", ports[0]), "node2": ("127.0.0.1", ports[1])}


async def _receiver(ports: list[int]) -> None:
    links = PeerLinks("node2", CLUSTER, _addresses(ports))
    links.handle("entries", lambda source, payload: b"")
    listeners = await trio.open_tcp_listeners(ports[1], host="127.0.0.1")
    await links.run(listeners)
    await trio.sleep_forever()


async def _sender(ports: list[int], count: int) -> None:
    links = PeerLinks("node1", CLUSTER, _addresses(ports))
    listeners = await trio.open_tcp_listeners(ports[0], host="127.0.0.1")
    async with trio.open_nursery() as nursery:
        await nursery.start(links.run, listeners)
        with trio.fail_after(10):
            while not links.link("node2").up:
                await trio.sleep(0.01)
        await links.request("node2", "entries", BODY)  # warm up

        start = time.perf_counter()
        last = None
        for _ in range(count):
            last = await links.submit("node2", "entries", BODY)
        assert last is not None
        await last.wait()
        elapsed = time.perf_counter() - start
        print(
            f"1 KiB requests, pipelined: {count / elapsed:,.0f} msg/s, "
            f"{count * len(BODY) / elapsed / 2**20:,.1f} MiB/s"
        )

        for batch in (10, 100):
            payload = BODY * batch
            requests = max(count // batch, 1)
            start = time.perf_counter()
            for _ in range(requests):
                last = await links.submit("node2", "entries", payload)
            await last.wait()
            elapsed = time.perf_counter() - start
            print(
                f"batches of {batch} x 1 KiB: {requests * batch / elapsed:,.0f} msg/s, "
                f"{requests * len(payload) / elapsed / 2**20:,.1f} MiB/s"
            )

        times = []
        for _ in range(min(count // 20, 5000)):
            start = time.perf_counter()
            await links.request("node2", "entries", BODY)
            times.append(time.perf_counter() - start)
        times.sort()
        print(
            f"round trip (1 KiB, one at a time): p50 {statistics.median(times) * 1e3:.3f} ms, "
            f"p99 {times[int(len(times) * 0.99)] * 1e3:.3f} ms"
        )
        nursery.cancel_scope.cancel()


def main(argv: list[str]) -> int:
    if argv[:1] == ["--receiver"]:
        trio.run(_receiver, [int(argv[1]), int(argv[2])])
        return 0
    count = int(argv[0]) if argv else 200_000
    ports = free_ports(2)
    child = subprocess.Popen([sys.executable, "-m", "bench.peer_link", "--receiver", *map(str, ports)])
    try:
        trio.run(_sender, ports, count)
    finally:
        child.kill()
        child.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
