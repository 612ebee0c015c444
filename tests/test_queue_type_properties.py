"""Quorum and stream queues must be durable, shared and kept (interop/test_queue_type_properties.py has
RabbitMQ's answers over AMQP); one stored before Leveret checked that still comes back at a restart."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from leveret.amqp.errors import ChannelError
from leveret.broker.server.main import open_node
from leveret.config import Config


async def test_a_stored_auto_delete_quorum_queue_from_before_the_check_still_recovers(tmp_path: Path) -> None:
    config = replace(Config(), data_dir=str(tmp_path))
    node = open_node(config)
    vhost = node.vhosts["/"]
    quorum = {"x-queue-type": "quorum"}
    with pytest.raises(ChannelError) as refused:
        vhost.declare_queue(
            "old", owner=None, durable=True, exclusive=False, auto_delete=True, arguments=quorum
        )
    assert refused.value.text == "invalid property 'auto-delete' for queue 'old' in vhost '/'"
    # As an older Leveret stored it: the definitions file holds it.
    vhost.declare_queue(
        "old", owner=None, durable=True, exclusive=False, auto_delete=True, arguments=quorum, restoring=True
    )
    assert node.persistence is not None
    node.persistence.close()

    restarted = open_node(config)
    queue = restarted.vhosts["/"].queues["old"]
    assert queue.auto_delete and queue.durable
    assert restarted.persistence is not None
    restarted.persistence.close()
