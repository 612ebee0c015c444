"""The formats two nodes exchange (peer frames and every request's payload) and the replica files' records
have a version each (peer_protocol.VERSION, replica_file.FORMAT), so that builds whose formats differ
refuse each other rather than misread. These tests encode one sample of everything and compare a
digest of the bytes with the one recorded for the current version: a change of a format that does not
bump its version fails here. After a deliberate change, bump the version and record the new digest."""

from __future__ import annotations

import hashlib

from leveret.broker.cluster import peer_protocol, remote_codec, replica_file
from leveret.broker.cluster.replica import (
    DEAD_LETTERING,
    DELETED,
    DELIVERED,
    ENQUEUE,
    ENQUEUE_AT,
    RETURNED,
    SETTLED,
    SETTLED_RANGE,
    LogEntry,
    ReplicaLog,
    encode_entries,
    encode_messages,
    encode_refs,
    encode_snapshot_head,
    location,
)
from leveret.broker.message import Message
from leveret.broker.server.replication import _APPEND_HEAD, _queue_head

# Digests of the samples below, per version. A new version adds its line; the old ones stay as history.
PEER_DIGESTS = {2: "aa501815abc01740092c97d0f64f01ca85afae6b3b73301c63b2966cba544f17"}
FILE_DIGESTS = {2: "3e5178497cbcd0a1244a2db1f874ce6862ff87a7638c88c680637c276082b00d"}

ENTRIES: list[LogEntry] = [
    (3, (ENQUEUE, 1, "ex", "key", b"\x10\x00\x02", b"body", 1_700_000_000_000)),
    (3, (ENQUEUE, 2, "", "q", b"\x00\x00", b"", 0)),
    (3, (DELIVERED, 1)),
    (3, (RETURNED, [1])),
    (4, (DEAD_LETTERING, [2], "rejected")),
    (4, (SETTLED, [1, 2])),
    (4, (SETTLED_RANGE, 5, 9)),
    (4, (DELETED,)),
]


def replica() -> ReplicaLog:
    log = ReplicaLog()
    log.start_epoch(3)
    for epoch, record in ENTRIES[:4]:
        log.append(epoch, record)
    return log


def peer_sample() -> bytes:
    message = Message("ex", "key", b"\x10\x00\x02", b"body")
    ops: list[remote_codec.Op] = [
        remote_codec.Publish("/", "q", message),
        remote_codec.Consume("/", "q", 7, remote_codec.EXCLUSIVE, 10, {"x-priority": 3}, 4),
        remote_codec.Credit(7, 99),
        remote_codec.Cancel(7),
        remote_codec.Settle("/", "q", remote_codec.REJECT, (1, 2)),
        remote_codec.Claim("/", "q", (3,), ((remote_codec.ACK, 5),)),
        remote_codec.Call("/", "q", remote_codec.CONSUMABLE, remote_codec.CALL_EXCLUSIVE, 7),
        remote_codec.Deliver(7, 5, True, message),
        remote_codec.Cancelled(7),
    ]
    log = replica()
    held = [((seq, h.exchange, h.routing_key, h.properties_raw, h.body, h.deadline), h.delivered, h.returns,
             h.dead_lettering) for seq, h in log.state.held.items()]
    parts = [
        peer_protocol.encode_hello("cluster", "node1"),
        peer_protocol.HEARTBEAT_FRAME,
        peer_protocol.encode_request(1, remote_codec.KIND, b"payload"),
        peer_protocol.encode_reply(1, False, b"refused"),
        *(remote_codec.encode_op(op) for op in ops),
        remote_codec.encode_results([remote_codec.CONFIRMED, remote_codec.REFUSED]),
        remote_codec.encode_call_result(remote_codec.CallResult(
            403, "in exclusive use", 3, 1, 2, 9, True, message)),
        _queue_head(("/", "q"), 4) + _APPEND_HEAD.pack(4, 2, -1) + encode_entries(ENTRIES),
        encode_snapshot_head(log.end, log.epochs, log.state),
        encode_messages(held),  # type: ignore[arg-type]
    ]
    return b"".join(parts)


def file_sample() -> bytes:
    log = replica()
    placed = {seq: location(1, 100 + seq) for seq in log.state.held}
    records = [
        (replica_file.ENTRIES, encode_entries([*ENTRIES, (4, (ENQUEUE_AT, 3, location(1, 40), 4, 3, 0))])),
        (replica_file.TRUNCATE, (5).to_bytes(8, "big")),
        (replica_file.SNAPSHOT, encode_refs(log.end, log.epochs, log.state, placed)),
        (replica_file.EPOCH, (5).to_bytes(8, "big")),
    ]
    file = replica_file.ReplicaFile.__new__(replica_file.ReplicaFile)
    file.vhost, file.queue = "/", "q"
    return file._header() + b"".join(replica_file._frame(kind, body) for kind, body in records)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_the_peer_formats_are_the_ones_of_this_version() -> None:
    assert digest(peer_sample()) == PEER_DIGESTS[peer_protocol.VERSION], (
        "a peer format changed: bump peer_protocol.VERSION and record the new digest here"
    )


def test_the_replica_file_records_are_the_ones_of_this_format() -> None:
    assert digest(file_sample()) == FILE_DIGESTS[replica_file.FORMAT], (
        "a replica file record changed: bump replica_file.FORMAT and record the new digest here"
    )
