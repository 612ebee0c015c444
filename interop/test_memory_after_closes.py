"""Issue 16 item 10: the memory that channels take comes back when they close, their connections open.

Leveret-only: RabbitMQ keeps most of it (bench/resource_holes.py closes: about 88% of what 10,000 channels
took, 30 s after they closed), so the bound below is Leveret's own, not RabbitMQ's behaviour.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from interop.brokers import Broker, RabbitMQBroker
from interop.fleet import ChannelFleet

CONNECTIONS = 300
CHANNELS = 10
# At most this share of what the channels added may stay resident a few seconds after they closed.
KEPT_SHARE = 0.5
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
    assert added > 3_000_000, f"{CONNECTIONS * CHANNELS} channels took only {added / 1e6:.1f} MB"
    fleet.close_channels()
    deadline = time.monotonic() + WAIT
    while (kept := _resident(broker) - with_connections) > KEPT_SHARE * added:
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    print(f"channels added {added / 1e6:.1f} MB, {kept / 1e6:.1f} MB kept after closing")
    assert kept <= KEPT_SHARE * added, f"{kept / 1e6:.1f} of {added / 1e6:.1f} MB kept after {WAIT} s"
    fleet.close_connections()
