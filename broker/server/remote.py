"""The I/O of queues led by other nodes: the hub's batches over the peer links (broker/cluster/remote.py).

One sender per other node takes what the hub queued for it (everything a reader's batch of client input
produced, since the sender runs only once that reader yields) and submits it as one "q.batch" request;
the reply's results go back to the hub. Batches from other nodes are handled as they arrive, and
answered once their publishes are durable here (a deferred reply: the link reads on meanwhile).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable
from typing import Any

import trio

from leveret.broker.cluster import remote_codec as codec
from leveret.broker.cluster.remote import Batch, RemoteQueues, no_leader_text
from leveret.broker.node import Node
from leveret.broker.server.peers import Deferred, PeerError, PeerLinks, PendingReply

log = logging.getLogger(__name__)


async def run_remote(node: Node, links: PeerLinks, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    cluster = node.cluster
    assert cluster is not None
    hub = cluster.remote
    wakeups = {name: trio.Event() for name in links.links}

    def wake(name: str) -> None:
        if name in wakeups:
            wakeups[name].set()

    def link_down(name: str) -> None:
        batch = hub.link_down(name)
        if batch is not None:
            hub.batch_answered(batch, None)

    def handle(source: str, payload: bytes) -> bytes | Deferred:
        handled = hub.handle(source, payload)  # a CodecError refuses the batch
        left = len(handled.published)
        safe = trio.Event()

        def settled(index: int, ok: bool) -> None:
            nonlocal left
            hub.confirmed(handled, index, ok)
            left -= 1
            if not left:
                safe.set()

        for index, position in handled.published:
            node.when_confirmed(position, functools.partial(settled, index))
        if not left:
            return hub.finish(handled)

        async def when_safe() -> bytes:
            await safe.wait()
            return hub.finish(handled)

        return Deferred(when_safe)

    hub.peers = list(links.links)
    hub.wake = wake
    hub.link_up = lambda name: name in links.links and links.links[name].up
    links.link_down = link_down
    links.handle(codec.KIND, handle)
    async with trio.open_nursery() as nursery:

        timeout = cluster.config.leader_call_timeout

        def call_leader(call: codec.Call, done: Callable[[codec.CallResult], None]) -> None:
            nursery.start_soon(_call, hub, call, done, timeout, node.when_confirmed)

        cluster.call_leader = call_leader
        cluster.leaders_changed = hub.reconcile
        for name in links.links:
            nursery.start_soon(_sender, links, hub, name, wakeups, nursery)
        hub.start()
        task_status.started()
        # Calls arrive for the node's whole life, also when no sender keeps the nursery open (a cluster of
        # one node: its own queues are asked before their leadership is known).
        await trio.sleep_forever()


async def _sender(
    links: PeerLinks, hub: RemoteQueues, name: str, wakeups: dict[str, trio.Event], nursery: trio.Nursery
) -> None:
    while True:
        await wakeups[name].wait()
        wakeups[name] = trio.Event()
        batch = hub.take(name)
        if batch is None:
            continue
        try:
            pending = await links.submit(name, codec.KIND, batch.payload)
        except PeerError as error:
            log.info("batch for %s not sent: %s", name, error)
            hub.batch_answered(batch, None)
            continue
        nursery.start_soon(_answered, hub, batch, pending)


async def _answered(hub: RemoteQueues, batch: Batch, pending: PendingReply) -> None:
    try:
        results: list[bytes] | None = codec.decode_results(await pending.wait())
    except (PeerError, codec.CodecError) as error:
        log.info("batch for %s failed: %s", batch.node, error)
        results = None
    hub.batch_answered(batch, results)


async def _call(
    hub: RemoteQueues,
    call: codec.Call,
    done: Callable[[codec.CallResult], None],
    timeout: float,
    when_confirmed: Callable[[int, Callable[[bool], None]], None],
) -> None:
    """Send `call` to the queue's leader (waiting up to `timeout`, cluster.leader_call_timeout, for one
    that answers) and hand `done` its answer."""
    result: codec.CallResult | None = None
    why = f"none answered within {timeout:g} s"
    with trio.move_on_after(timeout):
        while result is None:
            leader = hub.leadership.leader((call.vhost, call.queue), trio.current_time())
            if leader == hub.name and call.what == codec.PURGE:
                result = await _purge_here(hub, call, when_confirmed)
                if result is None:
                    await trio.sleep(0.05)
                continue
            if leader == hub.name and hub.led_here(call.vhost, call.queue):
                result = codec.CallResult(codec.LED_HERE)  # the method, handled again, finds the real queue
                break
            if leader is None or leader == hub.name or not hub.link_up(leader):
                await trio.sleep(0.05)
                continue
            generation = hub.generation.get(leader, 0)
            payload = await _ask(hub, leader, call)
            if payload is None:
                await trio.sleep(0.05)
                continue
            try:
                result = codec.decode_call_result(payload)
            except codec.CodecError as error:
                result = codec.CallResult(404, no_leader_text(call.vhost, call.queue, str(error)))
            if result.error_code == codec.NOT_LEADER:  # elected elsewhere meanwhile, or not quite yet
                why, result = result.error_text, None
                await trio.sleep(0.05)
                continue
            result = dataclasses.replace(result, node=leader, generation=generation)
    if result is None:
        result = codec.CallResult(404, no_leader_text(call.vhost, call.queue, why))
    done(result)


async def _purge_here(
    hub: RemoteQueues, call: codec.Call, when_confirmed: Callable[[int, Callable[[bool], None]], None]
) -> codec.CallResult | None:
    """A purge of a queue this node leads, answered once the log holds it as a confirm would be; None
    when this node turned out not to lead it (any more): ask whoever leads it next."""
    result, position = hub.purge(call.vhost, call.queue)
    if result.error_code == codec.NOT_LEADER:
        return None
    if position:
        replicated = trio.Event()
        outcome: list[bool] = []

        def safe(ok: bool) -> None:
            outcome.append(ok)
            replicated.set()

        when_confirmed(position, safe)
        await replicated.wait()
        if not outcome[0]:
            return None
    return result


async def _ask(hub: RemoteQueues, leader: str, call: codec.Call) -> bytes | None:
    """The call's result from `leader` (None: the batch carrying it failed)."""
    answer = trio.Event()
    outcome: list[bytes | None] = []

    def got(payload: bytes | None) -> None:
        outcome.append(payload)
        answer.set()

    hub.call(leader, call, got)
    await answer.wait()
    return outcome[0]
