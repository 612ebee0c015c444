"""A change made over HTTP in a cluster: when the vhost's metadata hook says etcd must agree first
(ClusterPending), submit the change, wait for it, and run the operation again under its replay, as a
ConnectionSession does for the same method over AMQP. A single node never waits."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import trio

from leveret.amqp.constants import INTERNAL_ERROR
from leveret.amqp.errors import ConnectionLevelError
from leveret.broker.cluster.hooks import ClusterPending
from leveret.broker.cluster.remote_codec import Call, CallResult
from leveret.broker.node import Node

T = TypeVar("T")
# More agreements than one operation can need (a lookup, then the declare): a loop past it is a bug.
MAX_ROUNDS = 8


async def through_cluster(node: Node, operation: Callable[[], T]) -> T:
    """operation()'s result. An etcd failure raises the 541 a client would get, as an AMQPError."""
    replaying: Any = None
    for _ in range(MAX_ROUNDS):
        try:
            if replaying is None or node.cluster is None:
                return operation()
            with node.cluster.metadata.replay(replaying):
                return operation()
        except ClusterPending as pending:
            replaying = await _agreed(node, pending.change)
    raise ConnectionLevelError(INTERNAL_ERROR, "cluster metadata: too many rounds for one change")


async def _agreed(node: Node, change: Any) -> Any:
    """`change` once etcd has done it."""
    assert node.cluster is not None
    done = trio.Event()
    outcome: list[Any] = []

    def finished(result: Any) -> None:
        outcome.append(result)
        done.set()

    node.cluster.metadata.submit(change, finished)
    await done.wait()
    if outcome[0].error is not None:
        raise ConnectionLevelError(INTERNAL_ERROR, f"cluster metadata store unavailable ({outcome[0].error})")
    return outcome[0]


async def ask_leader(node: Node, call: Call) -> CallResult:
    """The answer of the leader of a queue led by another node (a proxy here) to `call`, as a channel
    gets it (broker/server/remote.py: waiting up to its timeout for a leader)."""
    assert node.cluster is not None
    done = trio.Event()
    answers: list[CallResult] = []

    def answered(result: CallResult) -> None:
        answers.append(result)
        done.set()

    node.cluster.call_leader(call, answered)
    await done.wait()
    return answers[0]
