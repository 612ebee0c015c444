"""The "q.batch" peer request, sans-IO: what nodes send each other about queues led elsewhere.

One request carries a list of operations, in the order the sending node made them; its reply carries one
result for each operation that has one (publish, settle, claim, call), in the same order. Both directions
use it: a node without a queue's leadership sends publishes, consumer registrations, credit, settlements,
claims and calls to the leader; the leader sends deliveries and consumer cancellations back.

```
op        u8
PUBLISH   vhost, queue (str8) | message              -> result u8 (1 confirmed, 0 refused, 2 not the leader)
CONSUME   vhost, queue | cid u64 | flags u8 | limit u64 | received u64 | arguments (bytes32: a field table)
          received: deliveries it had before (from earlier leaders), which the limit counts
CREDIT    cid u64 | limit u64        limit: how many deliveries in all the consumer may have had
CANCEL    cid u64
SETTLE    vhost, queue | how u8 (ack, reject, requeue) | count u32 | seqs u64...
                                                   -> result u8 (1 replicated, 0 not: some seq not held)
CLAIM     vhost, queue | count u32 | held seqs u64... | count u32 | (how u8, seq u64)...
          what this node's clients hold unacked, and settlements no leader said were replicated, for a
          new leader (or the same after a broken link) to keep and apply   -> result u8 (as SETTLE's)
CALL      vhost, queue | what u8 | flags u8 | cid u64         -> result (see `CallResult`)
          cid: CONSUMABLE's consumer, whose place the leader keeps once it answers yes (else 0)
DELIVER   cid u64 | seq u64 | redelivered u8 | message        (leader -> consumer's node)
CANCELLED cid u64                                             (leader -> consumer's node)
message   exchange, routing key (str8) | properties (bytes32) | body (bytes32)
```
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass

from pamqp import decode as table_decode
from pamqp import encode as table_encode

from leveret.broker.message import Message

KIND = "q.batch"

PUBLISH, CONSUME, CREDIT, CANCEL, SETTLE, CALL, DELIVER, CANCELLED, CLAIM = range(1, 10)
ACK, REJECT, REQUEUE = range(3)
# CONSUMABLE: whether the queue takes a new consumer (a classic queue refuses one while in exclusive use);
# a yes keeps the consumer's place (its cid) until its CONSUME or CANCEL, so a check and a registration
# from another node cannot come between them.
GET, PURGE, COUNTS, DELETE, CONSUMABLE = range(5)

# A publish's result: confirmed, refused (nack), or sent to a node that does not lead the queue yet.
CONFIRMED, REFUSED, NOT_LEADER_YET = b"\x01", b"\x00", b"\x02"
# A call's error code when the node asked does not lead the queue (not an AMQP code: asked again).
NOT_LEADER = 1
# Where a call is answered: this node leads the queue now (the method is handled again, locally).
LED_HERE = 2
# CONSUME flags
NO_ACK, EXCLUSIVE = 1, 2
# CALL flags: basic.get's no_ack, queue.delete's if_unused and if_empty, basic.consume's exclusive
CALL_NO_ACK, IF_UNUSED, IF_EMPTY, CALL_EXCLUSIVE = 1, 2, 4, 8

_U8 = struct.Struct(">B")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_TWO_U64 = struct.Struct(">QQ")
_DELIVER = struct.Struct(">QQB")
_SETTLE = struct.Struct(">BQ")


class CodecError(ValueError):
    """A batch that is not this format: the request is refused, the link stays up."""


# Publish and Deliver, one per message, are not frozen: a frozen dataclass's __init__ costs several
# times a plain one's.
@dataclass(slots=True)
class Publish:
    vhost: str
    queue: str
    message: Message


@dataclass(frozen=True, slots=True)
class Consume:
    vhost: str
    queue: str
    cid: int
    flags: int
    limit: int
    arguments: dict
    received: int = 0


@dataclass(frozen=True, slots=True)
class Credit:
    cid: int
    limit: int


@dataclass(frozen=True, slots=True)
class Cancel:
    cid: int


@dataclass(frozen=True, slots=True)
class Settle:
    vhost: str
    queue: str
    how: int
    seqs: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Claim:
    """Seqs are the leader's: a message's seq in the queue's replicated log, the same on every replica."""

    vhost: str
    queue: str
    held: tuple[int, ...]
    settles: tuple[tuple[int, int], ...]  # (how, seq)


@dataclass(frozen=True, slots=True)
class Call:
    vhost: str
    queue: str
    what: int
    flags: int = 0
    cid: int = 0  # CONSUMABLE: the consumer asking (see above)


@dataclass(slots=True)
class Deliver:
    cid: int
    seq: int
    redelivered: bool
    message: Message


@dataclass(frozen=True, slots=True)
class Cancelled:
    cid: int


Op = Publish | Consume | Credit | Cancel | Settle | Call | Deliver | Cancelled | Claim


@dataclass(frozen=True, slots=True)
class CallResult:
    """A call's answer: an AMQP error (code, text), or counts and, for basic.get, the message taken."""


    error_code: int = 0
    error_text: str = ""
    message_count: int = 0
    consumer_count: int = 0
    unacked: int = 0  # counts: delivered, not yet settled
    seq: int = 0  # basic.get: the message's seq at the leader (0: the queue was empty)
    redelivered: bool = False
    message: Message | None = None
    # Not sent: set where the answer arrives (the node that gave it and that link's generation).
    node: str = ""
    generation: int = 0


# ---- encoding -------------------------------------------------------------------------------------


def _str8(text: str) -> bytes:
    raw = text.encode("utf-8", "surrogatepass")
    return _U8.pack(len(raw)) + raw


def _bytes32(raw: bytes | bytearray) -> bytes:
    return _U32.pack(len(raw)) + bytes(raw)


# A proxy's vhost and queue name open every publish to it: encoded once.
@functools.lru_cache(maxsize=4096)
def _publish_head(vhost: str, queue: str) -> bytes:
    return _U8.pack(PUBLISH) + _str8(vhost) + _str8(queue)


def _message(message: Message) -> bytes:
    # A message's names_raw (exchange and routing key as AMQP short strings) is exactly their two str8s.
    properties, body = message.properties_raw, message.body
    return b"".join(
        (message.names_raw, _U32.pack(len(properties)), properties, _U32.pack(len(body)), body)
    )


def encode_publish(vhost: str, queue: str, message: Message) -> bytes:
    """The PUBLISH op (what `encode_op(Publish(...))` gives), without building the op."""
    return _publish_head(vhost, queue) + _message(message)


def encode_op(op: Op) -> bytes:
    if isinstance(op, Publish):
        return encode_publish(op.vhost, op.queue, op.message)
    if isinstance(op, Deliver):
        return b"".join(
            (_U8.pack(DELIVER), _DELIVER.pack(op.cid, op.seq, op.redelivered), _message(op.message))
        )
    if isinstance(op, Credit):
        return _U8.pack(CREDIT) + _TWO_U64.pack(op.cid, op.limit)
    if isinstance(op, Settle):
        return b"".join(
            (
                _U8.pack(SETTLE),
                _str8(op.vhost),
                _str8(op.queue),
                _U8.pack(op.how),
                _U32.pack(len(op.seqs)),
                struct.pack(f">{len(op.seqs)}Q", *op.seqs),
            )
        )
    if isinstance(op, Consume):
        table = table_encode.field_table(op.arguments) if op.arguments else b""
        return b"".join(
            (
                _U8.pack(CONSUME),
                _str8(op.vhost),
                _str8(op.queue),
                _U64.pack(op.cid),
                _U8.pack(op.flags),
                _TWO_U64.pack(op.limit, op.received),
                _bytes32(table),
            )
        )
    if isinstance(op, Claim):
        return b"".join(
            (
                _U8.pack(CLAIM),
                _str8(op.vhost),
                _str8(op.queue),
                _U32.pack(len(op.held)),
                struct.pack(f">{len(op.held)}Q", *op.held),
                _U32.pack(len(op.settles)),
                b"".join(_SETTLE.pack(how, seq) for how, seq in op.settles),
            )
        )
    if isinstance(op, Cancel):
        return _U8.pack(CANCEL) + _U64.pack(op.cid)
    if isinstance(op, Cancelled):
        return _U8.pack(CANCELLED) + _U64.pack(op.cid)
    if isinstance(op, Call):
        return b"".join(
            (_U8.pack(CALL), _str8(op.vhost), _str8(op.queue), _U8.pack(op.what), _U8.pack(op.flags),
             _U64.pack(op.cid))
        )
    raise TypeError(f"not an op: {op!r}")


def encode_call_result(result: CallResult) -> bytes:
    message = result.message
    return b"".join(
        (
            _U32.pack(result.error_code),
            _bytes32(result.error_text.encode("utf-8", "replace")),
            _TWO_U64.pack(result.message_count, result.consumer_count),
            _TWO_U64.pack(result.unacked, result.seq),
            _U8.pack(result.redelivered),
            _U8.pack(message is not None),
            _message(message) if message is not None else b"",
        )
    )


def encode_results(results: list[bytes]) -> bytes:
    return b"".join(_bytes32(result) for result in results)


# ---- decoding -------------------------------------------------------------------------------------


class _Reader:
    __slots__ = ("data", "at")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def take(self, size: int) -> bytes:
        end = self.at + size
        if end > len(self.data):
            raise CodecError("truncated batch")
        chunk = self.data[self.at : end]
        self.at = end
        return chunk

    def unpack(self, shape: struct.Struct) -> tuple:
        return shape.unpack(self.take(shape.size))

    def u8(self) -> int:
        return int(self.unpack(_U8)[0])

    def u64(self) -> int:
        return int(self.unpack(_U64)[0])

    def str8(self) -> str:
        return self.take(self.u8()).decode("utf-8", "surrogatepass")

    def bytes32(self) -> bytes:
        return self.take(int(self.unpack(_U32)[0]))

    def message(self) -> Message:
        # Inlined (one per message): each field's length, then its bytes; a length past the end leaves
        # `at` past it, which the check at the end catches. The names' bytes are the message's names_raw.
        data, start = self.data, self.at
        (size,) = _U8.unpack_from(data, start)
        at = start + 1 + size
        exchange = data[at - size : at].decode("utf-8", "surrogatepass")
        (size,) = _U8.unpack_from(data, at)
        at += 1 + size
        routing_key = data[at - size : at].decode("utf-8", "surrogatepass")
        names = data[start:at]
        (size,) = _U32.unpack_from(data, at)
        at += 4 + size
        properties = data[at - size : at]
        (size,) = _U32.unpack_from(data, at)
        at += 4 + size
        body = data[at - size : at]
        if at > len(data):
            raise CodecError("truncated batch")
        self.at = at
        return Message(exchange, routing_key, properties, body, names)

    @property
    def done(self) -> bool:
        return self.at >= len(self.data)


def decode_ops(data: bytes) -> list[Op]:
    reader = _Reader(data)
    ops: list[Op] = []
    try:
        while not reader.done:
            ops.append(_decode_op(reader))
    except (UnicodeDecodeError, struct.error, ValueError) as error:
        raise CodecError(f"bad batch: {error}") from error
    return ops


def _decode_op(reader: _Reader) -> Op:
    op = reader.u8()
    if op == PUBLISH:
        return Publish(reader.str8(), reader.str8(), reader.message())
    if op == DELIVER:
        cid, seq, redelivered = reader.unpack(_DELIVER)
        return Deliver(cid, seq, bool(redelivered), reader.message())
    if op == CREDIT:
        cid, limit = reader.unpack(_TWO_U64)
        return Credit(cid, limit)
    if op == SETTLE:
        vhost, queue, how = reader.str8(), reader.str8(), reader.u8()
        count = int(reader.unpack(_U32)[0])
        seqs = struct.unpack(f">{count}Q", reader.take(8 * count))
        return Settle(vhost, queue, how, seqs)
    if op == CONSUME:
        vhost, queue = reader.str8(), reader.str8()
        cid, flags = reader.u64(), reader.u8()
        limit, received = reader.unpack(_TWO_U64)
        raw = reader.bytes32()
        arguments = table_decode.field_table(raw)[1] if raw else {}
        return Consume(vhost, queue, cid, flags, limit, arguments, received)
    if op == CLAIM:
        vhost, queue = reader.str8(), reader.str8()
        count = int(reader.unpack(_U32)[0])
        held = struct.unpack(f">{count}Q", reader.take(8 * count))
        count = int(reader.unpack(_U32)[0])
        settles = tuple(reader.unpack(_SETTLE) for _ in range(count))
        return Claim(vhost, queue, held, settles)
    if op == CANCEL:
        return Cancel(reader.u64())
    if op == CANCELLED:
        return Cancelled(reader.u64())
    if op == CALL:
        return Call(reader.str8(), reader.str8(), reader.u8(), reader.u8(), reader.u64())
    raise CodecError(f"unknown op {op}")


def decode_results(data: bytes) -> list[bytes]:
    reader = _Reader(data)
    results = []
    try:
        while not reader.done:
            results.append(reader.bytes32())
    except struct.error as error:
        raise CodecError(f"bad results: {error}") from error
    return results


def decode_call_result(data: bytes) -> CallResult:
    reader = _Reader(data)
    try:
        code = int(reader.unpack(_U32)[0])
        text = reader.bytes32().decode("utf-8", "replace")
        messages, consumers = reader.unpack(_TWO_U64)
        unacked, seq = reader.unpack(_TWO_U64)
        redelivered = bool(reader.u8())
        message = reader.message() if reader.u8() else None
    except (UnicodeDecodeError, struct.error, ValueError) as error:
        raise CodecError(f"bad call result: {error}") from error
    return CallResult(code, text, messages, consumers, unacked, seq, redelivered, message)
