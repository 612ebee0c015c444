"""A small etcd v3 client on httpx (which runs on trio), through etcd's JSON gateway (`/v3/...`).

Requests go to one member at a time. A connection error, a timeout or an etcd "no leader" answer moves
to the next member (rotation); the member that answered last is tried first next time.

Retries. A request is sent again, to another member, only when doing it twice is harmless:
- `range`, `lease_keepalive`, `lease_revoke` and `delete` (deleting twice deletes once) always retry;
- `put` and `txn` retry only when the request surely never reached etcd (the connection failed, or the
  member answered that it has no leader), unless the caller passes `retry=True`. A txn is safe to
  retry when its compare makes a second run a no-op whose answer tells the first run's outcome: Leveret's
  metadata txns create a record only if the key is absent (`Compare.absent`) and otherwise read it back,
  so a retry after an ambiguous failure finds its own record and the caller sees "already there, equal".
- anything else (a timeout after the request was sent, a reset mid-answer) raises `EtcdAmbiguous`: the
  change may or may not have been applied; the caller decides (re-read, or fail the client's request).

Watches (`watch`) resume after a broken stream from the revision after the last one seen, on the next
member; when that revision has been compacted away, the range is read again and handed over whole
(`WatchSnapshot`). A member that loses its leader cancels its watches (`hasleader` metadata), so a watch
never hangs on a member cut off from the cluster.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import aclosing
from typing import Any

import httpx
import trio

from leveret.broker.cluster.etcd_ops import (
    Delete,
    Get,
    KeyValue,
    Put,
    RangeResult,
    Txn,
    TxnResult,
    WatchEvents,
    WatchSnapshot,
    b64,
    header_revision,
    prefix_end,
    range_result,
    txn_result,
    watch_events,
)

log = logging.getLogger(__name__)
# httpx logs every request at info: a keepalive a second would fill the node's log. Its warnings stay.
logging.getLogger("httpx").setLevel(logging.WARNING)

# gRPC's UNAVAILABLE: etcd says so when it has no leader (the request was not applied).
_UNAVAILABLE = 14
_NO_LEADER = "etcdserver: no leader"
# Pause between two rounds over every member, so an election (1-2 s) is waited out, not hammered.
_ROUND_PAUSE = 0.1
# Keepalives sent per lease TTL: a lease outlives that many lost or late ones in a row, less one.
KEEPALIVES_PER_TTL = 4
# Longest pause between two attempts of a watch to resume while no member answers.
_MAX_WATCH_PAUSE = 1.0
# gRPC metadata through the gateway: a member without a leader cancels the watch instead of keeping it.
_REQUIRE_LEADER = {"Grpc-Metadata-hasleader": "true"}


class EtcdError(Exception):
    """etcd refused the request (bad request, unknown lease...): sending it again would not help."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


class EtcdUnavailable(EtcdError):
    """No member answered in time: the request was not applied."""


class EtcdAmbiguous(EtcdError):
    """The request was sent but no answer came back: it may or may not have been applied."""


class _Retry(Exception):
    def __init__(self, reason: str, sent: bool) -> None:
        super().__init__(reason)
        self.sent = sent  # the request may have reached etcd


class EtcdClient:
    def __init__(self, endpoints: Sequence[str], *, request_timeout: float = 2.0) -> None:
        if not endpoints:
            raise ValueError("no etcd endpoints")
        self.endpoints = [url.rstrip("/") for url in endpoints]
        self.request_timeout = request_timeout
        self._current = 0  # the member to try first
        self._http = httpx.AsyncClient(timeout=request_timeout)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> EtcdClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # ---- KV --------------------------------------------------------------------------------------

    async def range(self, key: bytes, range_end: bytes | None = None) -> RangeResult:
        body = await self._call("/v3/kv/range", Get(key, range_end).to_json(), retry=True)
        return range_result(body)

    async def get(self, key: bytes) -> KeyValue | None:
        kvs = (await self.range(key)).kvs
        return kvs[0] if kvs else None

    async def get_prefix(self, prefix: bytes) -> RangeResult:
        return await self.range(prefix, prefix_end(prefix))

    async def put(self, key: bytes, value: bytes, *, lease: int = 0, retry: bool = False) -> int:
        """Store `value` at `key`; returns the revision of the change."""
        body = await self._call("/v3/kv/put", Put(key, value, lease).to_json(), retry=retry)
        return header_revision(body)

    async def delete(self, key: bytes, range_end: bytes | None = None) -> int:
        """Delete `key` (or the range); returns how many keys went."""
        body = await self._call("/v3/kv/deleterange", Delete(key, range_end).to_json(), retry=True)
        return int(body.get("deleted", 0))

    async def txn(self, txn: Txn, *, retry: bool = False) -> TxnResult:
        """Run `txn`. Pass retry=True only for a txn whose second run is harmless (see the module doc)."""
        body = await self._call("/v3/kv/txn", txn.to_json(), retry=retry)
        return txn_result(txn, body)

    # ---- leases ------------------------------------------------------------------------------------

    async def lease_grant(self, ttl: int) -> tuple[int, int]:
        """A new lease: (id, granted TTL in seconds). A lease granted twice by a retry expires unused."""
        body = await self._call("/v3/lease/grant", {"TTL": str(ttl)}, retry=True)
        if body.get("error"):
            raise EtcdError(body["error"])
        return int(body["ID"]), int(body.get("TTL", 0))

    async def lease_keepalive(self, lease: int, *, attempt_timeout: float | None = None) -> int:
        """Renew `lease`; returns its TTL, 0 when it has expired (or never existed). `attempt_timeout`
        bounds the wait for each member (default: the request timeout)."""
        body = await self._call(
            "/v3/lease/keepalive", {"ID": str(lease)}, retry=True, attempt_timeout=attempt_timeout
        )
        return int(body.get("result", {}).get("TTL", 0))

    async def lease_revoke(self, lease: int) -> None:
        try:
            await self._call("/v3/lease/revoke", {"ID": str(lease)}, retry=True)
        except EtcdError as error:
            if "not found" not in str(error):  # revoked already, or expired
                raise

    async def keep_lease_alive(
        self,
        lease: int,
        ttl: int,
        *,
        renewed: Callable[[float], None] = lambda deadline: None,
        may_renew: Callable[[], bool] = lambda: True,
        task_status: Any = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Renew `lease` `KEEPALIVES_PER_TTL` times per TTL until cancelled. Returns when the lease is gone
        (it expired while etcd could not be reached): the caller has lost everything bound to it. After
        each renewal, `renewed(deadline)`: the lease surely lives until then (the time the keepalive was
        sent, on trio's clock, plus the TTL etcd answered; etcd renews it on receipt, later).

        Each keepalive leaves on time whatever became of the one before, so a slow answer on a loaded
        machine does not hold the next one back, and an attempt at one member waits at most half a TTL,
        so a member that hangs is left for another while the lease still lives. A keepalive is due only
        while `may_renew()`: the node is healthy enough to keep what its lease holds."""
        task_status.started()
        interval = max(ttl / KEEPALIVES_PER_TTL, 0.2)
        expired = trio.Event()  # or refused: `refused` says why
        refused: list[EtcdError] = []

        async def renew(sent: float) -> None:
            with trio.move_on_at(sent + ttl):  # an answer after that renews nothing this node can use
                try:
                    remaining = await self.lease_keepalive(
                        lease, attempt_timeout=min(ttl / 2, self.request_timeout)
                    )
                except EtcdUnavailable as error:
                    log.warning("etcd lease keepalive failed: %s", error)
                    return
                except EtcdError as error:  # raised to the caller as such, not in an exception group
                    refused.append(error)
                    expired.set()
                    return
                if remaining <= 0:
                    expired.set()
                else:
                    renewed(sent + remaining)

        async with trio.open_nursery() as nursery:
            next_at = trio.current_time() + interval
            while True:
                with trio.move_on_at(next_at):
                    await expired.wait()
                if expired.is_set():
                    break
                sent = trio.current_time()
                if may_renew():
                    nursery.start_soon(renew, sent)
                next_at += interval
                if next_at < sent:  # the process was paused: go on from now, no burst to catch up
                    next_at = sent + interval
            nursery.cancel_scope.cancel()
        if refused:
            raise refused[0]
        log.error("etcd lease %x expired", lease)

    # ---- watches -----------------------------------------------------------------------------------

    async def watch(
        self, key: bytes, range_end: bytes | None, start_revision: int
    ) -> AsyncIterator[WatchEvents | WatchSnapshot]:
        """Every change to the range from `start_revision` on, for as long as the caller iterates.

        Survives the loss of the member it is connected to (resumes on another from the last revision
        seen) and compaction (hands over a WatchSnapshot, then carries on from its revision).
        """
        next_revision = start_revision
        failures = 0  # in a row: a round over every member is quick, then the pauses grow to a second
        while True:
            compacted = False
            member = self._current
            try:
                async with aclosing(self._watch_once(key, range_end, next_revision)) as stream:
                    async for item in stream:
                        if isinstance(item, int):
                            compacted = True
                            break
                        failures = 0
                        next_revision = item.revision + 1
                        yield item
            except _Retry as failure:
                failures += 1
                log.info("etcd watch broke (%s); resuming from revision %d", failure, next_revision)
                self._rotate(member)
                backoff = 2 ** max(failures - len(self.endpoints), 0)
                await trio.sleep(min(_ROUND_PAUSE / 2 * backoff, _MAX_WATCH_PAUSE))
                continue
            if compacted:  # re-read the range, then go on from there
                try:
                    snapshot = await self.range(key, range_end)
                except EtcdUnavailable as error:
                    log.warning("etcd watch cannot re-read its range: %s", error)
                    continue
                yield WatchSnapshot(snapshot.kvs, snapshot.revision)
                next_revision = snapshot.revision + 1

    async def _watch_once(
        self, key: bytes, range_end: bytes | None, start_revision: int
    ) -> AsyncGenerator[WatchEvents | int, None]:
        """One watch stream on the current member: WatchEvents, or the compact revision (an int) when
        `start_revision` is gone; raises _Retry when the stream breaks."""
        create: dict[str, Any] = {
            "key": b64(key),
            "start_revision": str(start_revision),
            "progress_notify": True,
        }
        if range_end is not None:
            create["range_end"] = b64(range_end)
        url = self.endpoints[self._current] + "/v3/watch"
        # No read timeout: a quiet range sends nothing. Connecting has the usual timeout.
        timeout = httpx.Timeout(self.request_timeout, read=None)
        try:
            async with self._http.stream(
                "POST", url, json={"create_request": create}, timeout=timeout, headers=_REQUIRE_LEADER
            ) as response:
                if response.status_code != 200:
                    raise _Retry(f"HTTP {response.status_code} from {url}", sent=True)
                async for line in response.aiter_lines():
                    if not line.strip():
                        continue
                    message = json.loads(line)
                    if "error" in message:
                        raise _Retry(str(message["error"].get("message", message["error"])), sent=True)
                    result = message.get("result", {})
                    if int(result.get("compact_revision", 0)) > 0:
                        yield int(result["compact_revision"])
                        return
                    if result.get("canceled"):
                        raise _Retry(result.get("cancel_reason", "watch cancelled"), sent=True)
                    events = watch_events(result)
                    revision = header_revision(result)
                    if events:
                        # The header's revision may run ahead of what this answer holds (a fragment of
                        # historical events): only the events' own revisions are surely complete.
                        yield WatchEvents(events, events[-1].kv.mod_revision)
                    elif not result.get("created") and revision:
                        yield WatchEvents([], revision)  # a progress notification
            raise _Retry(f"watch stream from {url} ended", sent=True)
        except (httpx.TransportError, json.JSONDecodeError) as error:
            raise _Retry(f"{type(error).__name__} from {url}: {error}", sent=True) from error

    # ---- one request, over the members --------------------------------------------------------------

    def _rotate(self, failed: int) -> None:
        """Move on from member `failed`. Requests run at once (keepalives, watches) may fail on the same
        member together: only the first moves on, so the others do not skip the next member."""
        if failed == self._current:
            self._current = (self._current + 1) % len(self.endpoints)

    async def _call(
        self, path: str, body: dict[str, Any], *, retry: bool, attempt_timeout: float | None = None
    ) -> dict[str, Any]:
        """POST `body` to `path` on the members in turn until one answers, within about a request timeout
        per member (at least two rounds' worth, so that an etcd election is waited out). `attempt_timeout`
        bounds each attempt at one member (default: the request timeout)."""
        deadline = trio.current_time() + self.request_timeout * max(len(self.endpoints), 2)
        reasons: list[str] = []
        sent = False
        while True:
            for _ in range(len(self.endpoints)):
                member = self._current
                url = self.endpoints[member] + path
                try:
                    return await self._post(url, body, attempt_timeout)
                except _Retry as failure:
                    reasons.append(str(failure))
                    sent = sent or failure.sent
                    self._rotate(member)
                    if failure.sent and not retry:
                        raise EtcdAmbiguous(f"{path}: {failure}") from None
                if trio.current_time() >= deadline:
                    break
            if trio.current_time() >= deadline:
                break
            await trio.sleep(_ROUND_PAUSE)
        error = EtcdAmbiguous if sent and not retry else EtcdUnavailable
        raise error(f"{path}: no etcd member answered ({'; '.join(reasons[-len(self.endpoints) :])})")

    async def _post(self, url: str, body: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        try:
            response = await self._http.post(
                url, json=body, timeout=httpx.USE_CLIENT_DEFAULT if timeout is None else timeout
            )
        except (httpx.ConnectError, httpx.ConnectTimeout) as error:
            raise _Retry(f"{url}: {type(error).__name__}: {error}", sent=False) from error
        except httpx.TransportError as error:  # read timeout, reset mid-answer: it may have been applied
            raise _Retry(f"{url}: {type(error).__name__}: {error}", sent=True) from error
        try:
            answer = response.json()
        except json.JSONDecodeError:
            raise _Retry(f"{url}: HTTP {response.status_code}, not JSON", sent=True) from None
        if response.status_code == 200:
            return answer
        message = str(answer.get("message") or answer.get("error") or response.text)
        code = int(answer.get("code", 0))
        if code == _UNAVAILABLE and _NO_LEADER in message:
            raise _Retry(f"{url}: {message}", sent=False)
        if code == _UNAVAILABLE or response.status_code >= 500 and code in (0, 4):  # unavailable, deadline
            raise _Retry(f"{url}: {message}", sent=True)
        raise EtcdError(message, code)
