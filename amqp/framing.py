"""Cut AMQP frames out of a byte stream, in place, with a read offset."""

from __future__ import annotations

import struct

from .constants import FRAME_END, FRAME_ERROR, FRAME_HEADER_SIZE, FRAME_HEARTBEAT, FRAME_OVERHEAD
from .errors import ConnectionLevelError

_FRAME_HEADER = struct.Struct(">BHI")


class FrameReader:
    """Accumulates received bytes and hands out whole frames as (type, channel, payload).

    Frames larger than `frame_max` (the negotiated maximum, header and end octet included) and
    frames without the frame-end octet are connection errors, as in RabbitMQ.
    """

    __slots__ = ("_buffer", "_pos", "frame_max")

    def __init__(self, frame_max: int) -> None:
        self._buffer = bytearray()
        self._pos = 0
        self.frame_max = frame_max

    def feed(self, data: bytes) -> None:
        if self._pos:
            # Compact once per read, not once per frame.
            del self._buffer[: self._pos]
            self._pos = 0
        self._buffer += data

    def next_frame(self) -> tuple[int, int, bytes] | None:
        buf = self._buffer
        pos = self._pos
        if len(buf) - pos < FRAME_HEADER_SIZE:
            return None
        frame_type, channel, size = _FRAME_HEADER.unpack_from(buf, pos)
        total = size + FRAME_OVERHEAD
        if total > self.frame_max:
            raise ConnectionLevelError(
                FRAME_ERROR, f"frame size {total} exceeds the negotiated maximum {self.frame_max}"
            )
        if len(buf) - pos < total:
            return None
        if buf[pos + total - 1] != FRAME_END:
            raise ConnectionLevelError(FRAME_ERROR, f"frame end byte missing on channel {channel}")
        self._pos = pos + total
        return frame_type, channel, bytes(buf[pos + FRAME_HEADER_SIZE : pos + total - 1])

    def take_bytes(self, count: int) -> bytes | None:
        """Take `count` raw bytes (the protocol header) once that many have arrived."""
        if len(self._buffer) - self._pos < count:
            return None
        data = bytes(self._buffer[self._pos : self._pos + count])
        self._pos += count
        return data


def encode_frame(frame_type: int, channel: int, payload: bytes) -> bytes:
    return _FRAME_HEADER.pack(frame_type, channel, len(payload)) + payload + b"\xce"


HEARTBEAT_FRAME = bytes([FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END])
