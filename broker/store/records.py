"""Record framing for queue logs: magic, CRC, length, kind, payload.

    magic u32 | crc u32 | length u32 | kind u8 | payload (length bytes)     (little-endian)

An enqueue payload is seq u64 | exchange length u8 | routing key length u8 | properties length u32, then
the exchange, routing key, properties and body. A message with an expiry (message TTL) is an
ENQUEUE_EXPIRING record instead: deadline i64 (wall clock, ms since the epoch) | an enqueue payload.
Messages without one keep the plain ENQUEUE record, so they cost nothing more and older logs read as
before.

Every other change to a queue's durable state is a record too: SETTLE (acked), DELIVERED (first
delivery), RETURNED (back in the queue: redelivered, and one more in a quorum queue's delivery count),
REMOVED (expired, dropped over a limit, past the delivery limit, rejected, purged: with the reason), so that a
queue's log alone rebuilds it. Each segment starts with an EPOCH record: the leader epoch its records
were written in (0 on a single node; room for replication) and the queue's own log position at that
point. Logs from before these kinds (6, 7, 8) read as before; an older Leveret cannot read a log that
holds them (it skips them as damage).

The CRC covers length, kind and payload, and is seeded with the segment's random salt. The magic lets a
reader resync after a corrupt record by searching for the next candidate header; the salt makes a record
copied into a message body (same magic, valid CRC under another salt or none) fail the check instead of
being taken for a real record during that search.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable, Iterator, Sequence

from leveret.amqp.properties import peek_properties

# What a payload part may be: a message body is bytes, or a bytearray when it came in several frames.
Buffer = bytes | bytearray | memoryview

MAGIC = 0x31525654  # b"TVR1" read little-endian: a fixed marker to resync on
_HEADER = struct.Struct("<IIIB")
_MAGIC_CRC = struct.Struct("<II")
_LENGTH_KIND = struct.Struct("<IB")
HEADER_SIZE = _HEADER.size  # 13
_MAGIC_BYTES = MAGIC.to_bytes(4, "little")
_CRC_FROM = 8  # the CRC covers everything after the magic and the CRC itself

ENQUEUE = 1
SETTLE = 2
DELIVERED = 3
PAGE = 4  # a page file's one kind (pages.py): a run of paged-out messages in one record
ENQUEUE_EXPIRING = 5  # an enqueue with its deadline ahead of the enqueue payload
RETURNED = 6  # messages back in the queue (nacked, rejected or given back with requeue): epoch, runs
REMOVED = 7  # messages the queue removed (expired, over a limit, past the delivery limit): epoch, why, runs
EPOCH = 8  # first in each segment: the leader epoch of the records after it, and the log position here
# Messages dead-lettered at least once (held by the queue until every target has them; a REMOVED record
# follows): epoch, why, runs. They recover held, not ready.
DEAD_LETTERING = 9
# What a queue log holds.
KINDS = frozenset(
    (ENQUEUE, SETTLE, DELIVERED, ENQUEUE_EXPIRING, RETURNED, REMOVED, EPOCH, DEAD_LETTERING)
)
ENQUEUES = frozenset((ENQUEUE, ENQUEUE_EXPIRING))

# seq, then the lengths of exchange, routing key and properties; the body is the rest of the payload
_ENQUEUE_HEAD = struct.Struct("<QBBI")
# An expiring enqueue's deadline, then the same head.
_EXPIRING_HEAD = struct.Struct("<qQBBI")
_DEADLINE = struct.Struct("<q")
DEADLINE_SIZE = _DEADLINE.size
_SEQ = struct.Struct("<Q")
_RUN = struct.Struct("<QI")  # a settle run: first seq, count
_EPOCH = struct.Struct("<I")
_EPOCH_REASON = struct.Struct("<IB")
_EPOCH_POSITION = struct.Struct("<IQ")
# Why a queue removed messages (a REMOVED record's reason): dead-lettering's reasons, by number.
REASONS = ("expired", "maxlen", "delivery_limit", "rejected", "purged")
# A paged message: seq, then the lengths of its names (exchange and routing key as the wire's two short
# strings), properties and body, which follow.
_PAGED = struct.Struct("<QHII")


def record_header(kind: int, payload: Buffer, salt: int) -> bytes:
    """The header that frames `payload` as a record of a segment whose salt is `salt`. Returned apart
    from the payload so the caller appends both to its buffer without copying the payload once more."""
    return parts_header(kind, (payload,), salt)


def parts_header(kind: int, parts: Sequence[Buffer], salt: int) -> bytes:
    """The header of a record whose payload is `parts`, one after the other: a large body stays where it is
    (the message's own buffer) instead of being joined into a payload."""
    length_kind = _LENGTH_KIND.pack(sum(map(len, parts)), kind)
    crc = zlib.crc32(length_kind, salt)
    for part in parts:
        crc = zlib.crc32(part, crc)
    return _MAGIC_CRC.pack(MAGIC, crc) + length_kind


def _names(exchange: str, routing_key: str) -> tuple[bytes, bytes]:
    exchange_raw = exchange.encode()
    key_raw = routing_key.encode()
    if len(exchange_raw) > 255 or len(key_raw) > 255:
        raise ValueError("an exchange name or routing key is longer than 255 bytes")
    return exchange_raw, key_raw


def enqueue_parts(
    seq: int, exchange: str, routing_key: str, properties_raw: bytes, body: Buffer
) -> tuple[bytes, Buffer]:
    """An enqueue payload as (everything before the body, the body)."""
    exchange_raw, key_raw = _names(exchange, routing_key)
    head = _ENQUEUE_HEAD.pack(seq, len(exchange_raw), len(key_raw), len(properties_raw))
    return b"".join((head, exchange_raw, key_raw, properties_raw)), body


def expiring_enqueue_parts(
    deadline: int, seq: int, exchange: str, routing_key: str, properties_raw: bytes, body: Buffer
) -> tuple[bytes, Buffer]:
    """An ENQUEUE_EXPIRING payload: `deadline` (ms since the epoch), then what `enqueue_parts` makes."""
    exchange_raw, key_raw = _names(exchange, routing_key)
    head = _EXPIRING_HEAD.pack(deadline, seq, len(exchange_raw), len(key_raw), len(properties_raw))
    return b"".join((head, exchange_raw, key_raw, properties_raw)), body


def enqueue_payload(seq: int, exchange: str, routing_key: str, properties_raw: bytes, body: bytes) -> bytes:
    return b"".join(enqueue_parts(seq, exchange, routing_key, properties_raw, body))


def decode_deadline(data: bytes, start: int) -> int:
    """The deadline (ms since the epoch) of the ENQUEUE_EXPIRING payload at `start`; its enqueue payload
    starts DEADLINE_SIZE bytes later."""
    return _DEADLINE.unpack_from(data, start)[0]


def settle_payload(seqs: Iterable[int]) -> bytes:
    """Sorted seqs as runs of consecutive numbers: a `basic.ack multiple` of 1000 costs 12 bytes."""
    parts = []
    first = count = 0
    for seq in sorted(seqs):
        if count and seq == first + count:
            count += 1
            continue
        if count:
            parts.append(_RUN.pack(first, count))
        first, count = seq, 1
    if count:
        parts.append(_RUN.pack(first, count))
    return b"".join(parts)


def returned_payload(epoch: int, seqs: Iterable[int]) -> bytes:
    return _EPOCH.pack(epoch) + settle_payload(seqs)


def decode_returned(data: bytes, start: int, end: int) -> tuple[int, Iterator[int]]:
    """(epoch, seqs) of a RETURNED payload."""
    return _EPOCH.unpack_from(data, start)[0], decode_settle(data, start + _EPOCH.size, end)


def removed_payload(epoch: int, reason: str, seqs: Iterable[int]) -> bytes:
    return _EPOCH_REASON.pack(epoch, REASONS.index(reason)) + settle_payload(seqs)


def decode_removed(data: bytes, start: int, end: int) -> tuple[int, str, Iterator[int]]:
    """(epoch, reason, seqs) of a REMOVED payload."""
    epoch, reason = _EPOCH_REASON.unpack_from(data, start)
    return epoch, REASONS[reason], decode_settle(data, start + _EPOCH_REASON.size, end)


def epoch_payload(epoch: int, position: int) -> bytes:
    return _EPOCH_POSITION.pack(epoch, position)


def decode_epoch(data: bytes, start: int, end: int) -> tuple[int, int]:
    """(epoch, log position) of an EPOCH record."""
    return _EPOCH_POSITION.unpack_from(data, start)


def delivered_payload(seq: int) -> bytes:
    return _SEQ.pack(seq)


def page_parts(messages: Iterable[tuple[int, bytes, bytes, Buffer]]) -> list[Buffer]:
    """(seq, names_raw, properties_raw, body) of each message, as the parts of one payload: one CRC for a
    whole run."""
    pack = _PAGED.pack
    parts: list[Buffer] = []
    for seq, names, properties_raw, body in messages:
        parts += (pack(seq, len(names), len(properties_raw), len(body)), names, properties_raw, body)
    return parts


def page_payload(messages: Iterable[tuple[int, bytes, bytes, Buffer]]) -> bytes:
    return b"".join(page_parts(messages))


def decode_page(data: bytes, start: int, end: int) -> list[tuple[int, bytes, bytes, bytes]]:
    """The messages of a page payload (see `page_payload`); ValueError if they overrun it."""
    unpack = _PAGED.unpack_from
    head = _PAGED.size
    found = []
    pos = start
    while pos < end:
        seq, names_len, props_len, body_len = unpack(data, pos)
        names_at = pos + head
        props_at = names_at + names_len
        body_at = props_at + props_len
        pos = body_at + body_len
        if pos > end:
            raise ValueError("paged message overruns its record")
        found.append((seq, data[names_at:props_at], data[props_at:body_at], data[body_at:pos]))
    return found


def decode_enqueue(
    data: bytes, start: int, end: int, names: dict[bytes, str]
) -> tuple[int, str, str, bytes, bytes]:
    """(seq, exchange, routing_key, properties_raw, body) of an enqueue payload. `names` caches decoded
    exchange names and routing keys: recovered messages share one string per distinct name."""
    seq, exchange_len, key_len, props_len = _ENQUEUE_HEAD.unpack_from(data, start)
    pos = start + _ENQUEUE_HEAD.size
    props_at = pos + exchange_len + key_len
    body_at = props_at + props_len
    if body_at > end:
        raise ValueError("enqueue fields overrun the record")
    exchange_raw = data[pos : pos + exchange_len]
    key_raw = data[pos + exchange_len : props_at]
    exchange = names.get(exchange_raw)
    if exchange is None:
        exchange = names[exchange_raw] = exchange_raw.decode()
    routing_key = names.get(key_raw)
    if routing_key is None:
        routing_key = names[key_raw] = key_raw.decode()
    return seq, exchange, routing_key, data[props_at:body_at], data[body_at:end]


def peek_enqueue(data: bytes, start: int, end: int) -> tuple[int, int, int, int]:
    """(seq, body size, property flags, raw properties size) of an enqueue payload, copying nothing out of
    it: what recovery keeps of a message, whose body is read back by location when it is needed."""
    seq, exchange_len, key_len, props_len = _ENQUEUE_HEAD.unpack_from(data, start)
    props_at = start + _ENQUEUE_HEAD.size + exchange_len + key_len
    body_at = props_at + props_len
    if body_at > end:
        raise ValueError("enqueue fields overrun the record")
    flags = data[props_at] << 8 | data[props_at + 1] if props_len >= 2 else 0
    return seq, end - body_at, flags, props_len


def peek_priority(data: bytes, start: int, end: int) -> int:
    """The `priority` property of an enqueue payload (0 when its properties cannot be read)."""
    _, exchange_len, key_len, props_len = _ENQUEUE_HEAD.unpack_from(data, start)
    props_at = start + _ENQUEUE_HEAD.size + exchange_len + key_len
    try:
        return peek_properties(data[props_at : props_at + props_len])[1]
    except (ValueError, IndexError, struct.error):
        return 0


def record_at(
    data: bytes | bytearray, pos: int, salt: int, kinds: frozenset[int] = KINDS
) -> tuple[int, int, int] | None:
    """(kind, payload_start, payload_end) of the record that starts exactly at `pos`, or None when there is
    no valid one of `kinds` there (wrong magic, kind or CRC, or cut short). For reads by location, which
    never resync."""
    if pos < 0 or pos + HEADER_SIZE > len(data):
        return None
    magic, crc, length, kind = _HEADER.unpack_from(data, pos)
    stop = pos + HEADER_SIZE + length
    if magic != MAGIC or kind not in kinds or stop > len(data):
        return None
    if zlib.crc32(memoryview(data)[pos + _CRC_FROM : stop], salt) != crc:
        return None
    return kind, pos + HEADER_SIZE, stop


class PieceCheck:
    """The checks of a record read a piece at a time, each piece a buffer of its own (store/reader.py reads
    a large record so, leaving its body where pread put it instead of slicing it out of the whole)."""

    __slots__ = ("kind", "length", "_expected", "_crc", "_valid")

    def __init__(self, header: bytes, salt: int, kinds: frozenset[int]) -> None:
        """`header`: the HEADER_SIZE bytes the record starts with."""
        magic, self._expected, self.length, self.kind = _HEADER.unpack(header)
        self._valid = magic == MAGIC and self.kind in kinds
        self._crc = zlib.crc32(header[_CRC_FROM:], salt)

    def add(self, piece: bytes) -> None:
        self._crc = zlib.crc32(piece, self._crc)

    @property
    def valid(self) -> bool:
        """The header is one of the wanted kinds; once every piece is added, the CRC matches too."""
        return self._valid and self._crc == self._expected

    @property
    def plausible(self) -> bool:
        """The header alone is one of the wanted kinds (its CRC is known once the pieces are read)."""
        return self._valid


ENQUEUE_HEAD_SIZE = _ENQUEUE_HEAD.size
PAGED_HEAD_SIZE = _PAGED.size


def enqueue_front_size(head: bytes, start: int) -> int:
    """The size of everything before the body (head, exchange, routing key, properties) of the enqueue
    payload whose head (ENQUEUE_HEAD_SIZE bytes) is at `start` of `head`."""
    _seq, exchange_len, key_len, props_len = _ENQUEUE_HEAD.unpack_from(head, start)
    return _ENQUEUE_HEAD.size + exchange_len + key_len + props_len


def paged_head(head: bytes) -> tuple[int, int, int, int]:
    """(seq, names length, properties length, body length) of a paged message's head (PAGED_HEAD_SIZE
    bytes)."""
    return _PAGED.unpack(head)


def record_length(data: bytes | bytearray, pos: int) -> int:
    """The whole length (header and payload) a record header at `pos` claims; checked by `record_at`."""
    return HEADER_SIZE + _HEADER.unpack_from(data, pos)[2]


def decode_settle(data: bytes, start: int, end: int) -> Iterator[int]:
    for first, count in _RUN.iter_unpack(data[start:end]):
        yield from range(first, first + count)


def decode_delivered(data: bytes, start: int, end: int) -> int:
    return _SEQ.unpack_from(data, start)[0]


class RecordScanner:
    """Iterates the valid records of `data[start:]` as (kind, payload_start, payload_end).

    A header that fails any check (magic, length within the data, CRC) starts a bad region; the scan
    resumes at the next offset holding the magic that frames a valid record. Afterwards `skipped` lists
    the bad regions as (offset, length); one that ends at the end of `data` is a bad tail (a torn write).
    """

    def __init__(self, data: bytes, start: int, salt: int) -> None:
        self.data = data
        self.start = start
        self.salt = salt
        self.skipped: list[tuple[int, int]] = []

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        data = self.data
        view = memoryview(data)
        size = len(data)
        salt = self.salt
        unpack = _HEADER.unpack_from
        crc32 = zlib.crc32
        pos = self.start
        bad_from = -1  # start of the current bad region, -1 when none
        while pos + HEADER_SIZE <= size:
            magic, crc, length, kind = unpack(data, pos)
            payload = pos + HEADER_SIZE
            stop = payload + length
            valid = magic == MAGIC and stop <= size and kind in KINDS
            if valid and crc32(view[pos + _CRC_FROM : stop], salt) == crc:
                if bad_from >= 0:
                    self.skipped.append((bad_from, pos - bad_from))
                    bad_from = -1
                yield kind, payload, stop
                pos = stop
                continue
            if bad_from < 0:
                bad_from = pos
            pos = data.find(_MAGIC_BYTES, pos + 1)
            if pos < 0:
                break
        tail_from = bad_from if bad_from >= 0 else pos
        if tail_from < size:
            self.skipped.append((tail_from, size - tail_from))
