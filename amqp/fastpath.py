"""Hand-written struct codec for the frames on the message path.

pamqp spends ~8-10 us per publish+header+body and ~7-9 us per deliver; these functions do the same
in ~1-2 us (timeit, when they were written; `python -m bench.hotpath` measures the whole path).
Everything else goes through pamqp (amqp/codec.py).
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from .constants import FRAME_BODY, FRAME_END, FRAME_HEADER, FRAME_METHOD, FRAME_OVERHEAD

# (class_id << 16 | method_id) of the hot methods.
BASIC_PUBLISH = (60 << 16) | 40
BASIC_ACK = (60 << 16) | 80
BASIC_REJECT = (60 << 16) | 90
BASIC_NACK = (60 << 16) | 120

_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U64_BITS = struct.Struct(">QB")
_FRAME_HEAD = struct.Struct(">BHI")
_METHOD_ID = struct.Struct(">I")
_DELIVER_HEAD = struct.Struct(">BHIHH")  # frame type, channel, size, class, method
_CONTENT_HEADER = struct.Struct(">BHIHHQ")  # frame type, channel, size, class, weight, body size
_TAG_BITS = struct.Struct(">QB")
# The end of a method frame and the head of the content header frame that follows it.
_END_CONTENT_HEADER = struct.Struct(">BBHIHHQ")
# The end of the content header frame and the head of the one body frame that follows it.
_END_BODY_HEAD = struct.Struct(">BBHI")
_ACK_FRAME = struct.Struct(">BHIHHQBB")  # whole basic.ack / basic.nack frame, end octet included
_END = bytes([FRAME_END])


# A message body: bytes, or a bytearray when it came in several frames (see amqp/connection.py).
Body = bytes | bytearray
# What the encoders below return: a large body's frames are views of it, not copies.
Frame = bytes | bytearray | memoryview
Frames = list[Frame]


class Publish(NamedTuple):
    exchange: str
    routing_key: str
    mandatory: bool
    immediate: bool
    # Exchange and routing key as the wire had them (two short strings): reused by every delivery.
    names_raw: bytes = b""


class Ack(NamedTuple):
    delivery_tag: int
    multiple: bool


class Nack(NamedTuple):
    delivery_tag: int
    multiple: bool
    requeue: bool


class Reject(NamedTuple):
    delivery_tag: int
    requeue: bool


def method_key(payload: bytes) -> int:
    return _METHOD_ID.unpack_from(payload, 0)[0]


def _shortstr(payload: bytes, pos: int) -> tuple[str, int]:
    end = pos + 1 + payload[pos]
    if end > len(payload):
        raise ValueError("short string runs past the end of the frame")
    return payload[pos + 1 : end].decode("utf-8"), end


def decode_publish(payload: bytes) -> Publish:
    # class, method, reserved-1 (ticket) precede the exchange name; the bits octet ends the arguments.
    exchange, pos = _shortstr(payload, 6)
    routing_key, pos = _shortstr(payload, pos)
    if pos + 1 != len(payload):
        raise ValueError("basic.publish arguments do not fill the frame")
    bits = payload[pos]
    return Publish(exchange, routing_key, bool(bits & 1), bool(bits & 2), payload[6:pos])


# class, method, delivery tag, bits: every ack, nack and reject payload is this long.
_TAG_METHOD_SIZE = 13


def decode_ack(payload: bytes) -> Ack:
    if len(payload) != _TAG_METHOD_SIZE:
        raise ValueError("basic.ack arguments do not fill the frame")
    tag, bits = _U64_BITS.unpack_from(payload, 4)
    return Ack(tag, bool(bits & 1))


def decode_nack(payload: bytes) -> Nack:
    if len(payload) != _TAG_METHOD_SIZE:
        raise ValueError("basic.nack arguments do not fill the frame")
    tag, bits = _U64_BITS.unpack_from(payload, 4)
    return Nack(tag, bool(bits & 1), bool(bits & 2))


def decode_reject(payload: bytes) -> Reject:
    if len(payload) != _TAG_METHOD_SIZE:
        raise ValueError("basic.reject arguments do not fill the frame")
    tag, bits = _U64_BITS.unpack_from(payload, 4)
    return Reject(tag, bool(bits & 1))


def shortstr(value: str) -> bytes:
    raw = value.encode("utf-8")
    return _U8.pack(len(raw)) + raw


def content_frames(channel: int, properties_raw: bytes, body: Body, frame_max: int) -> Frames:
    """The content header frame and the body frames, split to fit `frame_max`."""
    size = len(body)
    parts: Frames = [
        _CONTENT_HEADER.pack(FRAME_HEADER, channel, 12 + len(properties_raw), 60, 0, size),
        properties_raw,
        _END,
    ]
    chunk = frame_max - FRAME_OVERHEAD
    if size <= chunk:
        if size:
            parts += (_FRAME_HEAD.pack(FRAME_BODY, channel, size), body, _END)
        return parts
    view = memoryview(body)
    for start in range(0, size, chunk):
        piece = view[start : start + chunk]
        # A memoryview slice, not a copy: writers take any bytes-like part.
        parts += (_FRAME_HEAD.pack(FRAME_BODY, channel, len(piece)), piece, _END)
    return parts


def names_raw(exchange: str, routing_key: str) -> bytes:
    """Exchange and routing key as the two short strings deliveries, gets and returns carry."""
    return shortstr(exchange) + shortstr(routing_key)


def deliver_frames(
    channel: int,
    consumer_tag: bytes,
    delivery_tag: int,
    redelivered: bool,
    names: bytes,
    properties_raw: bytes,
    body: Body,
    frame_max: int,
) -> Frames:
    """basic.deliver + content; `consumer_tag` and `names` (see names_raw) are already encoded."""
    size = len(body)
    method_size = 13 + len(consumer_tag) + len(names)  # class, method, tag, delivery tag, redelivered
    parts: Frames = [
        _DELIVER_HEAD.pack(FRAME_METHOD, channel, method_size, 60, 60),
        consumer_tag,
        _TAG_BITS.pack(delivery_tag, redelivered),
        names,
    ]
    if not size or size > frame_max - FRAME_OVERHEAD:
        parts += (_END, *content_frames(channel, properties_raw, body, frame_max))
        return parts
    # The usual delivery, a body in one frame: neighbouring frames' ends and heads packed together.
    parts += (
        _END_CONTENT_HEADER.pack(FRAME_END, FRAME_HEADER, channel, 12 + len(properties_raw), 60, 0, size),
        properties_raw,
        _END_BODY_HEAD.pack(FRAME_END, FRAME_BODY, channel, size),
        body,
        _END,
    )
    return parts


def get_ok_frames(
    channel: int,
    delivery_tag: int,
    redelivered: bool,
    names: bytes,
    message_count: int,
    properties_raw: bytes,
    body: Body,
    frame_max: int,
) -> Frames:
    args = _TAG_BITS.pack(delivery_tag, redelivered) + names + struct.pack(">I", message_count)
    head = _DELIVER_HEAD.pack(FRAME_METHOD, channel, 4 + len(args), 60, 71)
    return [head, args, _END, *content_frames(channel, properties_raw, body, frame_max)]


def return_frames(
    channel: int,
    reply_code: int,
    reply_text: str,
    names: bytes,
    properties_raw: bytes,
    body: Body,
    frame_max: int,
) -> Frames:
    args = _U16.pack(reply_code) + shortstr(reply_text) + names
    head = _DELIVER_HEAD.pack(FRAME_METHOD, channel, 4 + len(args), 60, 50)
    return [head, args, _END, *content_frames(channel, properties_raw, body, frame_max)]


def confirm_ack_frame(channel: int, delivery_tag: int, multiple: bool) -> bytes:
    return _ACK_FRAME.pack(FRAME_METHOD, channel, 13, 60, 80, delivery_tag, multiple, FRAME_END)


def confirm_nack_frame(channel: int, delivery_tag: int, multiple: bool) -> bytes:
    # basic.nack bits: multiple (bit 0), requeue (bit 1; meaningless from server to client).
    return _ACK_FRAME.pack(FRAME_METHOD, channel, 13, 60, 120, delivery_tag, multiple, FRAME_END)
