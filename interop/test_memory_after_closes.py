"""Issue 16 item 10: the memory that channels take comes back when they close, their connections open.

Leveret-only: RabbitMQ keeps most of it (bench/resource_holes.py closes: about 88% of what 10,000 channels
took, 30 s after they closed), so the bounds below are Leveret's own, not RabbitMQ's behaviour.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from interop.brokers import Broker, RabbitMQBroker
from interop.fleet import ChannelFleet

CONNECTIONS = 300
CHANNELS = 10
# What may stay resident, above the connections' own, a few seconds after the channels closed, by whether
# each consumed with 2 messages unacked. Before (main at 278bce5): 14.7 and 22.3 MB; now about 2.5 and 9.
KEPT_LIMIT = {0: 6_000_000, 2: 14_000_000}
WAIT = 8.0


def _resident(broker: Broker) -> int:
    with open(f"/proc/{broker.pid}/statm") as statm:
        return int(statm.read().split()[1]) * 4096


@pytest.mark.parametrize("in_flight", [0, 2], ids=["idle", "consuming"])
def test_closed_channels_give_their_memory_back(
    private_broker: Callable[..., Broker], in_flight: int
) -> None:
    broker = private_broker()
    if isinstance(broker, RabbitMQBroker):
        pytest.skip("Leveret-only: RabbitMQ keeps most of what closed channels took")
    fleet = ChannelFleet(broker, CONNECTIONS, CHANNELS, in_flight)
    time.sleep(0.5)
    with_connections = _resident(broker)
    fleet.open_channels()
    added = _resident(broker) - with_connections
    fleet.close_channels()
    limit = KEPT_LIMIT[in_flight]
    deadline = time.monotonic() + WAIT
    while (kept := _resident(broker) - with_connections) > limit and time.monotonic() < deadline:
        time.sleep(0.2)
    print(f"channels added {added / 1e6:.1f} MB, {kept / 1e6:.1f} MB kept after closing")
    assert kept <= limit, f"{kept / 1e6:.1f} MB kept {WAIT} s after closing (they took {added / 1e6:.1f})"
    fleet.close_connections()
