"""Hostile connections built from real client frames: hypothesis strategies for the raw-socket fuzzer.

A case is a real pika or amqplib session (`tests/data/captured/`) cut to a window of frames and mutated:
odd field values, malformed property lists and tables, bodies longer or shorter than their header says,
frames on unopened channels or interleaved with another channel's content, bad frame-end octets, frames
over frame_max, heartbeats on channels other than 0, unknown frame types and methods, handshakes left
half done or done wrong. `frame_level_error` says, for the bytes of a case, whether the framing alone is
invalid, in which case every broker must close the connection.
"""

from __future__ import annotations

import json
import random
import struct
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import strategies as st

CAPTURED = Path(__file__).resolve().parent.parent / "data" / "captured"
PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
FRAME_MAX = 131072  # what the captured tune-oks ask for, and both brokers' default
FRAME_END = 0xCE
_FRAME_HEAD = struct.Struct(">BHI")
# The channel of the probe that checks a connection still answers: one no captured session uses.
PROBE_CHANNEL = 1999


@dataclass(repr=False)
class Frame:
    kind: int
    channel: int
    payload: bytes
    size: int | None = None  # a size field that lies about the payload; None: the true size
    end: int = FRAME_END

    def encode(self) -> bytes:
        size = len(self.payload) if self.size is None else self.size
        return _FRAME_HEAD.pack(self.kind, self.channel, size) + self.payload + bytes([self.end])

    def copy(self) -> Frame:
        return Frame(self.kind, self.channel, self.payload, self.size, self.end)

    def __repr__(self) -> str:  # short: a batch of cases is printed whole when a test fails
        lies = f", size {self.size}" if self.size is not None else ""
        end = f", end {self.end:#x}" if self.end != FRAME_END else ""
        head = f"{self.payload[:24].hex()}[{len(self.payload)}]"
        return f"Frame({self.kind}, ch {self.channel}, {head}{lies}{end})"


@dataclass(frozen=True)
class Session:
    """A captured session: the handshake (start-ok, tune-ok, open) and everything after it."""

    client: str
    handshake: tuple[Frame, ...]
    frames: tuple[Frame, ...]


def _load(path: Path) -> Session:
    frames = []
    for kind, channel, payload in json.loads(path.read_text()):
        data = b"\x2e" * payload if isinstance(payload, int) else bytes.fromhex(payload)
        frames.append(Frame(kind, channel, data))
    return Session(path.stem, tuple(frames[:3]), tuple(frames[3:]))


SESSIONS = tuple(_load(path) for path in sorted(CAPTURED.glob("*.json")))


def method_frame(channel: int, class_id: int, method_id: int, arguments: bytes = b"") -> Frame:
    return Frame(1, channel, struct.pack(">HH", class_id, method_id) + arguments)


def channel_open(channel: int) -> Frame:
    return method_frame(channel, 20, 10, b"\x00")


# Methods no captured session sends: server-only ones, close-oks nobody asked for, unknown ones.
ODD_METHODS = (
    (10, 10),
    (10, 20),
    (10, 30),
    (10, 41),
    (10, 51),
    (10, 60),
    (10, 61),
    (10, 70),
    (10, 71),
    (20, 11),
    (20, 21),
    (20, 41),
    (40, 11),
    (50, 11),
    (60, 11),
    (60, 21),
    (60, 31),
    (60, 50),
    (60, 60),
    (60, 71),
    (60, 72),
    (60, 111),
    (85, 11),
    (90, 11),
    (0, 0),
    (10, 99),
    (99, 10),
    (60, 200),
    (65535, 65535),
    (30, 10),
    (80, 10),
)


@dataclass
class Case:
    """One hostile connection: how far the handshake goes honestly, then the bytes sent."""

    session: str
    handshake: str  # "full": open, then frames; "header": header, then frames; "raw": bytes at once
    frames: list[Frame] = field(default_factory=list)
    raw_prefix: bytes = b""  # for "raw": a (maybe broken) protocol header before the frames
    mutations: list[str] = field(default_factory=list)
    chunk: int = 0  # send the payload this many bytes at a time (0: one write)

    def payload(self) -> bytes:
        return self.raw_prefix + b"".join(frame.encode() for frame in self.frames)

    @property
    def frame_count(self) -> int:
        return len(self.frames)


def frame_level_error(data: bytes, frame_max: int = FRAME_MAX) -> str | None:
    """Why the framing of `data` (frames after the handshake) is invalid, if it is.

    A frame whose size exceeds frame_max, whose end octet is not 0xCE, whose type is unknown, or a
    heartbeat off channel 0: any broker must close the connection (501 FRAME_ERROR at the latest there).
    None when every complete frame is well framed (the last one may be incomplete).
    """
    pos = 0
    while pos + 7 <= len(data):
        kind, channel, size = _FRAME_HEAD.unpack_from(data, pos)
        if size + 8 > frame_max:
            return f"frame of {size + 8} bytes over frame_max"
        if pos + size + 8 > len(data):
            return None
        if data[pos + size + 7] != FRAME_END:
            return "bad frame-end octet"
        if kind not in (1, 2, 3, 8):
            return f"frame type {kind}"
        if kind == 8 and channel != 0:
            return "heartbeat on a channel"
        pos += size + 8
    return None


def ends_at_frame_boundary(data: bytes) -> bool:
    pos = 0
    while pos + 7 <= len(data):
        pos += _FRAME_HEAD.unpack_from(data, pos)[2] + 8
    return pos == len(data)


# ---- mutations: each takes the frame list, hypothesis-drawn numbers and a seeded Random -------------


def _pick(frames: list[Frame], index: int, kinds: tuple[int, ...] = (1, 2, 3, 8)) -> Frame | None:
    candidates = [frame for frame in frames if frame.kind in kinds]
    return candidates[index % len(candidates)] if candidates else None


def flip_bytes(frames: list[Frame], index: int, rng: random.Random) -> str:
    """Odd field values: a few bytes of a method or header payload replaced (never its class id)."""
    frame = _pick(frames, index, (1, 2))
    if frame is None or len(frame.payload) <= 4:
        return "flip:none"
    data = bytearray(frame.payload)
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(2 if rng.random() < 0.2 else 4, len(data))
        data[at] = rng.choice((0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)))
    frame.payload = bytes(data)
    return f"flip:{frame.kind}"


def truncate(frames: list[Frame], index: int, rng: random.Random) -> str:
    """A payload cut short, its size field telling the truth: fields run past the end."""
    frame = _pick(frames, index, (1, 2, 3))
    if frame is None or not frame.payload:
        return "truncate:none"
    frame.payload = frame.payload[: rng.randrange(len(frame.payload))]
    return f"truncate:{frame.kind}"


def extend(frames: list[Frame], index: int, rng: random.Random) -> str:
    """Trailing bytes after the last field, or a longer body frame than its header announced."""
    frame = _pick(frames, index, (1, 2, 3))
    if frame is None:
        return "extend:none"
    frame.payload += rng.randbytes(rng.randint(1, 16))
    return f"extend:{frame.kind}"


def bad_end(frames: list[Frame], index: int, rng: random.Random) -> str:
    frame = _pick(frames, index)
    if frame is None:
        return "bad-end:none"
    frame.end = rng.choice((0x00, 0xCD, 0xCF, 0xFF, rng.randrange(256)))
    if frame.end == FRAME_END:
        frame.end = 0
    return "bad-end"


def lie_size(frames: list[Frame], index: int, rng: random.Random) -> str:
    """A size field that disagrees with the bytes sent: the stream desynchronises, or waits."""
    frame = _pick(frames, index)
    if frame is None:
        return "size:none"
    true = len(frame.payload)
    frame.size = max(
        0, rng.choice((true - 1, true + 1, true + rng.randint(2, 64), 0, rng.randrange(1 << 32)))
    )
    return "size"


def frame_type(frames: list[Frame], index: int, rng: random.Random) -> str:
    frame = _pick(frames, index)
    if frame is None:
        return "type:none"
    frame.kind = rng.choice((0, 1, 2, 3, 4, 8, 9, 0xCE, 255))
    return f"type:{frame.kind}"


def rechannel(frames: list[Frame], index: int, rng: random.Random) -> str:
    """A frame moved to channel 0, an unopened channel, the highest channel, or the other open one."""
    frame = _pick(frames, index)
    if frame is None:
        return "channel:none"
    frame.channel = rng.choice((0, 1, 2, 3, 7, 2047, 2048, 65535))
    return f"channel:{frame.channel}"


def heartbeat(frames: list[Frame], index: int, rng: random.Random) -> str:
    channel = rng.choice((0, 0, 1, 2, 65535))
    payload = b"" if rng.random() < 0.7 else rng.randbytes(rng.randint(1, 8))
    frames.insert(index % (len(frames) + 1), Frame(8, channel, payload))
    return f"heartbeat:{channel}"


def oversized(frames: list[Frame], index: int, rng: random.Random) -> str:
    """A frame over frame_max: its size field only (the broker must not wait for the bytes)."""
    size = rng.choice((FRAME_MAX - 7, FRAME_MAX, FRAME_MAX * 2, (1 << 32) - 1))
    kind = rng.choice((1, 2, 3))
    frames.insert(index % (len(frames) + 1), Frame(kind, rng.choice((0, 1)), b"\x00" * 16, size=size))
    return "oversized"


def body_size(frames: list[Frame], index: int, rng: random.Random) -> str:
    """A content header announcing more or less body than follows (or an absurd amount)."""
    frame = _pick(frames, index, (2,))
    if frame is None or len(frame.payload) < 12:
        return "body-size:none"
    announced = struct.unpack_from(">Q", frame.payload, 4)[0]
    new = rng.choice(
        (
            0,
            1,
            announced - 1 if announced else 1,
            announced + 1,
            announced * 2,
            (1 << 27) + 1,
            (1 << 63) - 1,
            (1 << 64) - 1,
        )
    )
    frame.payload = (
        frame.payload[:4] + struct.pack(">Q", min(max(0, new), (1 << 64) - 1)) + frame.payload[12:]
    )
    return "body-size"


def property_flags(frames: list[Frame], index: int, rng: random.Random) -> str:
    """Property flags that promise fields the list does not hold (or a continuation word)."""
    frame = _pick(frames, index, (2,))
    if frame is None or len(frame.payload) < 14:
        return "flags:none"
    flags = rng.choice((0xFFFF, 0xFFFE, 0x0001, 0x2000, 0x1000, 0x0100, 0x0010, rng.randrange(1 << 16)))
    frame.payload = frame.payload[:12] + struct.pack(">H", flags) + frame.payload[14:]
    return "flags"


def corrupt_table(frames: list[Frame], index: int, rng: random.Random) -> str:
    """A field table (arguments, headers, client properties) with a bad length or type tag."""
    tables = [f for f in frames if f.kind in (1, 2) and (b"\x00\x00\x00" in f.payload[4:])]
    if not tables:
        return "table:none"
    frame = tables[index % len(tables)]
    data = bytearray(frame.payload)
    at = data.find(b"\x00\x00\x00", 4)
    # The byte after "\0\0\0" is the low byte of a (likely) table length: make it lie, or break the tag
    # of its first value.
    if at + 4 < len(data):
        if rng.random() < 0.5:
            data[at + 3] = rng.choice((0, 1, 0xFF, data[at + 3] + 1 & 0xFF))
        else:
            key_at = at + 4
            tag_at = key_at + 1 + data[key_at] if key_at < len(data) else len(data)
            if tag_at < len(data):
                data[tag_at] = rng.choice(b"ZzXQ\x00\xffAFSlIbtVx")
    frame.payload = bytes(data)
    return "table"


def odd_method(frames: list[Frame], index: int, rng: random.Random) -> str:
    class_id, method_id = rng.choice(ODD_METHODS)
    channel = rng.choice((0, 1, 1, 2))
    frames.insert(
        index % (len(frames) + 1),
        method_frame(channel, class_id, method_id, rng.randbytes(rng.randint(0, 12))),
    )
    return f"method:{class_id}.{method_id}"


def drop(frames: list[Frame], index: int, rng: random.Random) -> str:
    if not frames:
        return "drop:none"
    removed = frames.pop(index % len(frames))
    return f"drop:{removed.kind}"


def duplicate(frames: list[Frame], index: int, rng: random.Random) -> str:
    if not frames:
        return "dup:none"
    at = index % len(frames)
    frames.insert(at + rng.randint(0, 3), frames[at].copy())
    return f"dup:{frames[at].kind}"


def interleave(frames: list[Frame], index: int, rng: random.Random) -> str:
    """A frame of another channel (or of the same) slipped between a content header and its body."""
    headers = [i for i, f in enumerate(frames) if f.kind == 2]
    if not headers or len(frames) < 2:
        return "interleave:none"
    at = headers[index % len(headers)] + 1
    moved = frames[rng.randrange(len(frames))].copy()
    if rng.random() < 0.5:
        moved.channel = 2 if moved.channel == 1 else 1
    frames.insert(at, moved)
    return f"interleave:{moved.kind}"


def swap(frames: list[Frame], index: int, rng: random.Random) -> str:
    if len(frames) < 2:
        return "swap:none"
    i = index % (len(frames) - 1)
    frames[i], frames[i + 1] = frames[i + 1], frames[i]
    return "swap"


def random_frame(frames: list[Frame], index: int, rng: random.Random) -> str:
    kind = rng.choice((1, 2, 3, 8, 4, 0))
    payload = rng.randbytes(rng.randint(0, 48))
    if kind == 1 and rng.random() < 0.7:
        payload = rng.choice(SESSIONS).frames[0].payload[:4] + payload  # a real method id, random arguments
    frames.insert(index % (len(frames) + 1), Frame(kind, rng.choice((0, 1, 2, 5)), payload))
    return f"random:{kind}"


MUTATIONS = (
    flip_bytes,
    flip_bytes,
    flip_bytes,
    truncate,
    extend,
    bad_end,
    lie_size,
    frame_type,
    rechannel,
    heartbeat,
    oversized,
    body_size,
    body_size,
    property_flags,
    property_flags,
    corrupt_table,
    corrupt_table,
    odd_method,
    drop,
    duplicate,
    interleave,
    swap,
    random_frame,
)

BROKEN_HEADERS = (
    b"AMQP\x00\x00\x09\x01",  # the right one, so that frames before start-ok are tried too
    b"AMQP\x01\x01\x00\x09",
    b"AMQP\x00\x00\x08\x00",
    b"AMQP\x00\x01\x00\x00",
    b"AMQP\x03\x01\x00\x00",
    b"AMQP\x00\x00\x09\x02",
    b"AMQP",
    b"amqp\x00\x00\x09\x01",
    b"GET / HTTP/1.1\r\n\r\n",
    b"\x16\x03\x01\x00",
    b"\x01\x00\x00\x00\x00\x00\x04",
    b"",
)


@st.composite
def cases(draw: st.DrawFn, max_window: int = 40, max_mutations: int = 4) -> Case:
    session = draw(st.sampled_from(SESSIONS))
    handshake = draw(st.sampled_from(("full",) * 8 + ("header", "raw")))
    body = list(session.frames)
    start = draw(st.integers(0, len(body) - 1))
    window = [frame.copy() for frame in body[start : start + draw(st.integers(1, max_window))]]
    if start and draw(st.integers(0, 9)) < 8:
        # Usually open the channels the window uses, so mutations reach past channel.open checks.
        used = sorted({frame.channel for frame in window if frame.channel})
        window = [channel_open(channel) for channel in used] + window
    case = Case(session.client, handshake, window)
    if handshake != "full":
        case.frames = [frame.copy() for frame in session.handshake] + case.frames
    if handshake == "raw":
        case.raw_prefix = draw(st.sampled_from(BROKEN_HEADERS))
    rng = draw(st.randoms(use_true_random=True))
    for _ in range(draw(st.integers(0, max_mutations))):
        mutate = draw(st.sampled_from(MUTATIONS))
        case.mutations.append(mutate(case.frames, draw(st.integers(0, 1 << 16)), rng))
    case.chunk = draw(st.sampled_from((0, 0, 0, 1, 7, 100)))
    return case
