"""Cut AMQP frames out of a byte stream with a read offset, and recognise the common publish whole."""

from __future__ import annotations

import struct

from .constants import FRAME_END, FRAME_ERROR, FRAME_HEADER_SIZE, FRAME_HEARTBEAT, FRAME_OVERHEAD
from .errors import ConnectionLevelError

_FRAME_HEADER = struct.Struct(">BHI")
_METHOD_HEAD = struct.Struct(">BHII")  # frame type, channel, size, class and method ids
_CONTENT_HEAD = struct.Struct(">BHIHHQ")  # frame type, channel, size, class, weight, body size
_METHOD = 1
_PUBLISH_ID = (60 << 16) | 40  # basic.publish
# A frame still missing more than this is collected as a list of reads and joined once, instead of
# re-copying the buffer on every read (a 16 MiB body arrives in hundreds of reads).
_LARGE_FRAME = 256 * 1024


class FrameReader:
    """Accumulates received bytes and hands out whole frames as (type, channel, payload).

    The buffer is immutable `bytes`: slicing a payload out of it is a single copy. Frames larger than
    `frame_max` (header and end octet included) and frames without the frame-end octet are
    connection errors, as in RabbitMQ.
    """

    __slots__ = ("_buffer", "_pos", "_chunks", "_chunk_bytes", "_awaiting", "frame_max", "broken")

    def __init__(self, frame_max: int) -> None:
        self._buffer = b""
        self._pos = 0
        self._chunks: list[bytes] = []
        self._chunk_bytes = 0
        self._awaiting = 0  # bytes the large frame being collected needs; 0 when none is
        self.frame_max = frame_max
        # After a frame too large or without its end octet there is no telling where the next frame
        # starts: what is buffered is dropped, and the connection should read no more frames.
        self.broken = False

    def feed(self, data: bytes) -> None:
        if self._awaiting:
            self._chunks.append(data)
            self._chunk_bytes += len(data)
            if self._chunk_bytes < self._awaiting:
                return
            data = b"".join(self._chunks)
            self._chunks, self._chunk_bytes, self._awaiting = [], 0, 0
            self._buffer, self._pos = data, 0
            return
        pos = self._pos
        self._buffer = self._buffer[pos:] + data if pos < len(self._buffer) else data
        self._pos = 0

    def next_frame(self) -> tuple[int, int, bytes] | None:
        buf = self._buffer
        pos = self._pos
        available = len(buf) - pos
        if available < FRAME_HEADER_SIZE:
            return None
        frame_type, channel, size = _FRAME_HEADER.unpack_from(buf, pos)
        total = size + FRAME_OVERHEAD
        if total > self.frame_max:
            self._break()
            raise ConnectionLevelError(
                FRAME_ERROR, f"frame size {total} exceeds the negotiated maximum {self.frame_max}"
            )
        if available < total:
            if total - available > _LARGE_FRAME:
                self._chunks, self._chunk_bytes, self._awaiting = [buf[pos:]], available, total
                self._buffer, self._pos = b"", 0
            return None
        if buf[pos + total - 1] != FRAME_END:
            self._break()
            raise ConnectionLevelError(FRAME_ERROR, f"frame end byte missing on channel {channel}")
        self._pos = pos + total
        return frame_type, channel, buf[pos + FRAME_HEADER_SIZE : pos + total - 1]

    def peek_publish(self) -> tuple[int, bytes, bytes, bytes, int] | None:
        """The common publish, whole in the buffer: (channel, method payload, properties, body, end).

        A basic.publish method frame, its content header and at most one body frame holding the whole
        body, well-formed and on one channel. Anything else (a split body, a partial frame, an anomaly)
        returns None and goes the frame-by-frame way, which also reports errors. Nothing is consumed
        until `advance(end)`.
        """
        buf = self._buffer
        pos = self._pos
        if len(buf) - pos < _METHOD_HEAD.size:  # the usual end of a read: all taken (no struct.error raised)
            return None
        # Fixed-layout heads unpacked whole; running past the end of the buffer means "not yet".
        try:
            kind, channel, method_size, method_id = _METHOD_HEAD.unpack_from(buf, pos)
            if kind != _METHOD or method_id != _PUBLISH_ID:
                return None
            header_at = pos + method_size + FRAME_OVERHEAD
            kind, header_channel, header_size, class_id, weight, body_size = _CONTENT_HEAD.unpack_from(
                buf, header_at
            )
        except struct.error:
            return None
        body_at = header_at + header_size + FRAME_OVERHEAD
        largest = self.frame_max - FRAME_OVERHEAD
        if (
            kind != 2
            or header_channel != channel
            or class_id != 60
            or weight
            or header_size < 14
            or method_size > largest
            or header_size > largest
            or body_at > len(buf)
            or buf[header_at - 1] != FRAME_END
            or buf[body_at - 1] != FRAME_END
        ):
            return None
        method_payload = buf[pos + FRAME_HEADER_SIZE : header_at - 1]
        properties = buf[header_at + 19 : body_at - 1]
        if body_size == 0:
            return channel, method_payload, properties, b"", body_at
        try:
            kind, body_channel, frame_size = _FRAME_HEADER.unpack_from(buf, body_at)
        except struct.error:
            return None
        end = body_at + frame_size + FRAME_OVERHEAD
        if (
            kind != 3
            or body_channel != channel
            or frame_size != body_size
            or frame_size > largest
            or end > len(buf)
            or buf[end - 1] != FRAME_END
        ):
            return None
        return channel, method_payload, properties, buf[body_at + FRAME_HEADER_SIZE : end - 1], end

    def _break(self) -> None:
        self.broken = True
        self._buffer, self._pos = b"", 0

    def advance(self, end: int) -> None:
        self._pos = end

    def take_bytes(self, count: int) -> bytes | None:
        """Take `count` raw bytes (the protocol header) once that many have arrived."""
        if len(self._buffer) - self._pos < count:
            return None
        data = self._buffer[self._pos : self._pos + count]
        self._pos += count
        return data


def encode_frame(frame_type: int, channel: int, payload: bytes) -> bytes:
    return _FRAME_HEADER.pack(frame_type, channel, len(payload)) + payload + b"\xce"


HEARTBEAT_FRAME = bytes([FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END])
