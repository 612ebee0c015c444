"""The node's lease keepalive, sent from a thread of its own.

On a loaded machine the node's trio loop can run late by a good part of a lease TTL: keepalives sent from
it went out late, the lease lapsed and the node gave up every queue it led while alive and working. So
keepalives go out from a second trio loop in a daemon thread, with an etcd client of its own; it needs
the GIL only for a moment per keepalive, which the interpreter hands over every few milliseconds.

A lease kept alive by a thread alone would outlive a node whose loop is stuck, so the thread renews only
while the main loop's heartbeat (stamped every `HEARTBEAT` seconds) is at most one TTL old. A paused
process stops both threads; a main loop blocked for longer than a TTL stops the renewals, and the lease
lapses as it would have.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import trio

from leveret.broker.server.etcd import EtcdClient
from leveret.config import Etcd

log = logging.getLogger(__name__)

HEARTBEAT = 0.1
# How long a stopping node waits for the thread to end (it is cancelled at its next checkpoint).
_STOP_TIMEOUT = 2.0


class _LeaseThread:
    """One lease's keepalives in a thread; `stop` and `ended` are for the main loop."""

    def __init__(self, etcd: Etcd, lease: int, ttl: int, renewed: Callable[[float], None]) -> None:
        self._etcd = etcd
        self._lease, self._ttl = lease, ttl
        self._renewed = renewed  # called from the thread, with a deadline on the main loop's clock
        self._main_token = trio.lowlevel.current_trio_token()
        # The main loop's clock is trio's SystemClock, perf_counter() plus this offset.
        self._main_offset = trio.current_time() - time.perf_counter()
        self.stamp = time.monotonic()  # the main loop's latest heartbeat
        self.ended = trio.Event()  # set on the main loop once the thread is done
        self.error: BaseException | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._scope = trio.CancelScope()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"lease-{lease:x}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    async def beat(self) -> None:
        while True:
            self.stamp = time.monotonic()
            await trio.sleep(HEARTBEAT)

    def stop(self) -> None:
        # Each side writes its flag before reading the other's, so one of them sees the stop.
        self._stopping = True
        if self._token is not None:
            try:
                self._token.run_sync_soon(self._scope.cancel)
            except trio.RunFinishedError:
                pass  # it ended by itself

    def join(self) -> None:
        self._thread.join(timeout=_STOP_TIMEOUT)

    # ---- in the thread -------------------------------------------------------------------------

    def _healthy(self) -> bool:
        return time.monotonic() - self.stamp <= self._ttl

    def _on_renewal(self, deadline: float) -> None:
        # From this loop's clock to the main loop's, through what is left of the lease.
        self._renewed(deadline - trio.current_time() + time.perf_counter() + self._main_offset)

    def _run(self) -> None:
        try:
            trio.run(self._keep_alive)
        except BaseException as error:  # handed to the main loop, which raises it or logs it
            self.error = error
        finally:
            try:
                self._main_token.run_sync_soon(self.ended.set)
            except trio.RunFinishedError:
                pass  # the main loop is gone: nobody waits

    async def _keep_alive(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        if self._stopping:
            return
        with self._scope:
            async with EtcdClient(self._etcd.endpoints, request_timeout=self._etcd.request_timeout) as client:
                await client.keep_lease_alive(
                    self._lease, self._ttl, renewed=self._on_renewal, may_renew=self._healthy
                )


async def keep_lease_alive_in_thread(
    etcd: Etcd, lease: int, ttl: int, *, renewed: Callable[[float], None]
) -> None:
    """As EtcdClient.keep_lease_alive, from a thread: returns when the lease is gone, raises the EtcdError
    etcd refused a keepalive with. `renewed(deadline)` is called from the thread (it must be thread-safe),
    with a deadline on this loop's clock. The thread is stopped and ended when this returns or is
    cancelled."""
    keeper = _LeaseThread(etcd, lease, ttl, renewed)
    keeper.start()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(keeper.beat)
            await keeper.ended.wait()
            nursery.cancel_scope.cancel()
    finally:
        keeper.stop()
        with trio.CancelScope(shield=True), trio.move_on_after(_STOP_TIMEOUT):
            await keeper.ended.wait()
        keeper.join()
    if keeper.error is not None:
        raise keeper.error
