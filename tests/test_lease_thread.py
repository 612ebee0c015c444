"""The lease keepalive thread: renews while the main loop beats, stops when it does not, ends with it.

etcd is replaced by a fake `lease_keepalive` here (tests/test_cluster_liveness.py runs it against a real
one); what is tested is the thread's timing and its hand-over to the main loop.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import trio

from leveret.broker.server.etcd import EtcdClient, EtcdError, EtcdUnavailable
from leveret.broker.server.lease_thread import keep_lease_alive_in_thread
from leveret.config import Etcd

ETCD = Etcd(("http://127.0.0.1:1",), request_timeout=1.0)  # never reached: lease_keepalive is faked


class FakeKeepalives:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sent: list[float] = []  # time.monotonic() of each keepalive
        self.answer: int | BaseException = 2
        fake = self

        async def lease_keepalive(self: EtcdClient, lease: int, **options: Any) -> int:
            fake.sent.append(time.monotonic())
            if isinstance(fake.answer, BaseException):
                raise fake.answer
            return fake.answer

        monkeypatch.setattr(EtcdClient, "lease_keepalive", lease_keepalive)


def lease_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name.startswith("lease-")]


async def test_renewals_reach_the_main_loop_on_its_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    etcd = FakeKeepalives(monkeypatch)
    deadlines: list[tuple[float, float]] = []  # (deadline given, main loop's clock then)
    with trio.move_on_after(1.3):
        await keep_lease_alive_in_thread(
            ETCD, 7, 2, renewed=lambda deadline: deadlines.append((deadline, time.monotonic()))
        )
    assert len(etcd.sent) >= 2  # one every half second
    assert deadlines
    offset = trio.current_time() - time.monotonic()
    for deadline, at in deadlines:
        assert 1.8 < deadline - (at + offset) <= 2.0  # sent a moment ago, plus the 2 s etcd answered
    assert lease_threads() == []


async def test_renewals_go_on_while_the_main_loop_is_blocked_for_less_than_a_ttl(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    etcd = FakeKeepalives(monkeypatch)
    renewed: list[float] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: keep_lease_alive_in_thread(ETCD, 7, 2, renewed=renewed.append))
        await trio.sleep(0.3)
        blocked = time.monotonic()
        time.sleep(1.6)  # the loop is stuck, as on a starved machine
        during = [at for at in etcd.sent if at > blocked]
        nursery.cancel_scope.cancel()
    assert len(during) >= 2
    assert max(renewed) > trio.current_time() + 0.5  # the lease lives on past the stall
    assert lease_threads() == []


async def test_a_main_loop_blocked_for_longer_than_a_ttl_stops_the_renewals(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    etcd = FakeKeepalives(monkeypatch)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: keep_lease_alive_in_thread(ETCD, 7, 2, renewed=print))
        await trio.sleep(0.3)
        blocked = time.monotonic()
        time.sleep(3.5)
        late = [at - blocked for at in etcd.sent if at > blocked + 2.1]
        nursery.cancel_scope.cancel()
    assert late == []  # nothing after the heartbeat grew a TTL old
    assert any(0 < at - blocked <= 2.1 for at in etcd.sent)


async def test_an_expired_lease_ends_it_and_a_refusal_is_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    etcd = FakeKeepalives(monkeypatch)
    etcd.answer = 0
    with trio.fail_after(3):
        await keep_lease_alive_in_thread(ETCD, 7, 2, renewed=print)
    etcd.answer = EtcdError("requested lease not found")
    with pytest.raises(EtcdError, match="not found"), trio.fail_after(3):
        await keep_lease_alive_in_thread(ETCD, 7, 2, renewed=print)
    assert lease_threads() == []


async def test_an_unreachable_etcd_is_logged_and_tried_again(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    etcd = FakeKeepalives(monkeypatch)
    etcd.answer = EtcdUnavailable("no member answered")
    with trio.move_on_after(1.3):
        await keep_lease_alive_in_thread(ETCD, 7, 2, renewed=print)
    assert len(etcd.sent) >= 2
    assert "no member answered" in caplog.text
    assert lease_threads() == []
