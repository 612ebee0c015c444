"""The peer link's wire format, sans-IO: frames between two nodes of a cluster.

Every frame is `length (u32, big-endian) | type (u8) | body`, where length counts the type byte and body.

```
HELLO      body: JSON {"cluster": identity, "node": name, "version": 2}   first frame each way
HEARTBEAT  body: empty                                                    sent by an idle writer
REQUEST    body: id (u64) | kind length (u8) | kind (ASCII) | payload     one message for a handler
REPLY      body: id (u64) | status (u8: 0 ok, 1 refused) | payload       its acknowledgement
```

`VERSION` covers these frames and every request's payload (remote_codec's "q.batch", replication's
`repl.*` with replica.py's entries and snapshots, `node.stats`): nodes of two builds whose formats
differ must not link, since each would misread the other. A hello of another version is refused, with
both versions in the log of both nodes (the acceptor sends its own hello first, so the dialer knows
why). tests/test_wire_formats.py fails when a format changes and VERSION does not.

Requests are answered in the order they arrive on a link (one reader hands them to the handlers in turn),
so replies come back in order too; ids still pair them, so a caller need not rely on it.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

HELLO = 1
HEARTBEAT = 2
REQUEST = 3
REPLY = 4

# 1: up to session 5; 2: CALL carries a consumer id, and the replica entries and snapshots of session 5.
VERSION = 2
REPLY_OK = 0
REPLY_REFUSED = 1

# Larger than the largest message a client may publish (128 MiB) with room for a batch's framing.
MAX_FRAME = 256 * 1024 * 1024 + 4096

_LENGTH = struct.Struct(">IB")  # length, type
_REQUEST = struct.Struct(">QB")  # id, kind length
_REPLY = struct.Struct(">QB")  # id, status


class PeerProtocolError(Exception):
    """The other end sent something that is not this protocol: the link is closed."""


class PeerVersionMismatch(PeerProtocolError):
    """The other end is a node of a build that speaks another version of this protocol."""

    def __init__(self, node: str, theirs: int, ours: int = VERSION) -> None:
        super().__init__(
            f"node {node!r} speaks peer protocol version {theirs}, this node version {ours}: nodes of "
            "different builds cannot link (run the same build on every node)"
        )
        self.node, self.theirs, self.ours = node, theirs, ours


@dataclass(frozen=True, slots=True)
class Hello:
    cluster: str
    node: str
    version: int = VERSION


@dataclass(frozen=True, slots=True)
class Heartbeat:
    pass


@dataclass(frozen=True, slots=True)
class Request:
    id: int
    kind: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class Reply:
    id: int
    ok: bool
    payload: bytes


Frame = Hello | Heartbeat | Request | Reply
HEARTBEAT_FRAME = _LENGTH.pack(1, HEARTBEAT)


def encode_hello(cluster: str, node: str, version: int = VERSION) -> bytes:
    body = json.dumps({"cluster": cluster, "node": node, "version": version}).encode()
    return _LENGTH.pack(1 + len(body), HELLO) + body


def encode_request(request_id: int, kind: str, payload: bytes) -> bytes:
    name = kind.encode("ascii")
    if not 0 < len(name) < 256:
        raise ValueError(f"request kind must be 1..255 ASCII characters, got {kind!r}")
    length = 1 + _REQUEST.size + len(name) + len(payload)
    return b"".join((_LENGTH.pack(length, REQUEST), _REQUEST.pack(request_id, len(name)), name, payload))


def encode_reply(request_id: int, ok: bool, payload: bytes) -> bytes:
    status = REPLY_OK if ok else REPLY_REFUSED
    length = 1 + _REPLY.size + len(payload)
    return b"".join((_LENGTH.pack(length, REPLY), _REPLY.pack(request_id, status), payload))


class FrameDecoder:
    """Frames cut from the bytes of one link, however the stream was split."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buffer = bytearray()

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes, *, limit: int | None = None) -> list[Frame]:
        """Every whole frame in what has arrived so far (at most `limit`, the rest left buffered);
        raises PeerProtocolError on garbage."""
        buffer = self._buffer
        buffer += data
        frames: list[Frame] = []
        offset = 0
        view = memoryview(buffer)
        try:
            while len(buffer) - offset >= _LENGTH.size and (limit is None or len(frames) < limit):
                length, kind = _LENGTH.unpack_from(buffer, offset)
                if length < 1 or length > self.max_frame:
                    raise PeerProtocolError(f"frame length {length} out of range")
                end = offset + 4 + length
                if end > len(buffer):
                    break
                frames.append(_decode(kind, view[offset + _LENGTH.size : end]))
                offset = end
        finally:
            view.release()
        if offset:
            del buffer[:offset]
        return frames

    def take_buffered(self) -> bytes:
        """The bytes not yet cut into frames, handed over (the buffer is left empty)."""
        rest = bytes(self._buffer)
        self._buffer.clear()
        return rest


def _decode(kind: int, body: memoryview) -> Frame:
    if kind == HEARTBEAT:
        return Heartbeat()
    if kind == REQUEST:
        if len(body) < _REQUEST.size:
            raise PeerProtocolError("request frame too short")
        request_id, name_length = _REQUEST.unpack_from(body)
        start = _REQUEST.size + name_length
        if name_length == 0 or start > len(body):
            raise PeerProtocolError("request frame with a bad kind")
        try:
            name = bytes(body[_REQUEST.size : start]).decode("ascii")
        except UnicodeDecodeError:
            raise PeerProtocolError("request kind is not ASCII") from None
        return Request(request_id, name, bytes(body[start:]))
    if kind == REPLY:
        if len(body) < _REPLY.size:
            raise PeerProtocolError("reply frame too short")
        request_id, status = _REPLY.unpack_from(body)
        if status not in (REPLY_OK, REPLY_REFUSED):
            raise PeerProtocolError(f"reply status {status} unknown")
        return Reply(request_id, status == REPLY_OK, bytes(body[_REPLY.size :]))
    if kind == HELLO:
        try:
            fields = json.loads(bytes(body))
            return Hello(str(fields["cluster"]), str(fields["node"]), int(fields["version"]))
        except (ValueError, KeyError, TypeError):
            raise PeerProtocolError("hello frame is not the expected JSON") from None
    raise PeerProtocolError(f"frame type {kind} unknown")


def check_hello(frame: Frame, cluster: str, expected: set[str] | str) -> Hello:
    """The other end's hello, or PeerProtocolError saying why it may not join this link."""
    if not isinstance(frame, Hello):
        raise PeerProtocolError(f"expected a hello first, got {type(frame).__name__}")
    if frame.cluster != cluster:
        raise PeerProtocolError(f"node {frame.node!r} belongs to another cluster ({frame.cluster!r})")
    names = {expected} if isinstance(expected, str) else expected
    if frame.node not in names:
        raise PeerProtocolError(f"node {frame.node!r} is not expected on this link")
    if frame.version != VERSION:
        raise PeerVersionMismatch(frame.node, frame.version)
    return frame
