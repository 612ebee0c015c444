"""Run fuzz cases over raw sockets, many at once, and record what the broker answered each.

Each connection does its case's handshake (the captured start-ok, tune-ok and open, each sent after the
broker's start, tune or open-ok), sends the mutated frames, then a probe (channel.open on a channel no
session uses) when the bytes end on a frame boundary, and reads until the broker closes the socket or a
quiet timeout passes. It answers connection.close and channel.close with their close-oks, as a client
would. The result is one `Outcome` per case.
"""

from __future__ import annotations

import selectors
import socket
import struct
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from tests.wirefuzz.cases import (
    PROBE_CHANNEL,
    PROTOCOL_HEADER,
    SESSIONS,
    Case,
    channel_open,
    ends_at_frame_boundary,
    frame_level_error,
    method_frame,
)

_FRAME_HEAD = struct.Struct(">BHI")
_START, _TUNE, _OPEN_OK = (10 << 16) | 10, (10 << 16) | 30, (10 << 16) | 41
_CONNECTION_CLOSE, _CHANNEL_CLOSE, _CHANNEL_OPEN_OK = (10 << 16) | 50, (20 << 16) | 40, (20 << 16) | 11
_HANDSHAKES = {session.client: session.handshake for session in SESSIONS}
_CONNECTION_CLOSE_OK = method_frame(0, 10, 51).encode()
_CONNECTION_CLOSE_OK_ID = (10 << 16) | 51
_PROBE_GRACE = 0.3
_ANSWER_TIMEOUT = 10.0


@dataclass
class Outcome:
    """What the broker did with one case.

    `connection_close`: (code, class id, method id, text) of its connection.close, if any;
    `channel_closes`: (channel, code, class id, method id) of each channel.close; `end`: "closed" (the
    broker closed the socket), "reset", or "open" (still open at the timeout). `probe_answered`: the
    channel.open sent after the frames got its open-ok. `header_reply`: bytes that were not frames (a
    protocol header sent back).
    """

    case: Case
    connection_close: tuple[int, int, int, str] | None = None
    channel_closes: list[tuple[int, int, int, int]] = field(default_factory=list)
    end: str = "open"
    close_ok: bool = False  # the broker answered a client's connection.close
    probe_sent: bool = False
    probe_answered: bool = False
    header_reply: bytes = b""
    handshake_done: bool = False
    frames_sent: int = 0

    @property
    def code(self) -> int | None:
        return self.connection_close[0] if self.connection_close else None

    def signature(self) -> str:
        """A short label of the broker's observable answer, for histograms and comparisons."""
        parts = [f"channel.close {code}" for _, code, _, _ in self.channel_closes]
        if self.header_reply:
            parts.append("protocol header")
        if self.connection_close:
            parts.append(f"connection.close {self.connection_close[0]}")
        elif self.close_ok:
            parts.append("connection.close-ok")
        elif self.end != "open":
            parts.append("silent close")
        elif self.probe_answered:
            parts.append("alive")
        else:
            parts.append("open, no answer")
        return ", ".join(parts) or "nothing"


@dataclass
class _Conn:
    case: Case
    sock: socket.socket
    outcome: Outcome
    stages: list[tuple[bytes, int | None, int]]
    deadline: float
    quiet: float
    inbox: bytearray = field(default_factory=bytearray)
    outbox: bytearray = field(default_factory=bytearray)
    replies: bytearray = field(default_factory=bytearray)  # close-oks, sent after the hostile bytes
    chunked: list[bytes] = field(default_factory=list)
    waiting_for: int | None = None
    frames_received: int = 0
    owed: bool = False  # an answer is due: the probe's open-ok, or a close for invalid framing

    def wait(self) -> None:
        """Give the broker `quiet` seconds to say more, or longer while it owes an answer (a loaded
        machine may take a while)."""
        self.deadline = time.monotonic() + (_ANSWER_TIMEOUT if self.owed else self.quiet)


def _stages(case: Case) -> list[tuple[bytes, int | None, int]]:
    """(bytes to send, method to wait for before the next stage, frames in them) for the case."""
    last = (case.payload(), None, case.frame_count)
    if case.handshake == "raw":
        return [last]
    if case.handshake == "header":
        return [(PROTOCOL_HEADER, _START, 0), last]
    start_ok, tune_ok, open_ = (frame.encode() for frame in _HANDSHAKES[case.session])
    return [(PROTOCOL_HEADER, _START, 0), (start_ok, _TUNE, 1), (tune_ok + open_, _OPEN_OK, 2), last]


def _wants_probe(case: Case) -> bool:
    data = case.payload()
    return case.handshake == "full" and ends_at_frame_boundary(data) and frame_level_error(data) is None


def run_cases(
    host: str,
    port: int,
    cases: Iterable[Case],
    *,
    concurrency: int = 64,
    quiet: float = 1.0,
    handshake_timeout: float = 10.0,
) -> list[Outcome]:
    """Run every case; at most `concurrency` connections at once. `quiet`: how long a connection may stay
    silent after everything was sent before it counts as left open."""
    pending = list(cases)
    pending.reverse()
    outcomes: list[Outcome] = []
    selector = selectors.DefaultSelector()
    live: dict[int, _Conn] = {}

    def launch(case: Case) -> None:
        sock = socket.socket()
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.connect_ex((host, port))
        conn = _Conn(case, sock, Outcome(case), _stages(case), time.monotonic() + handshake_timeout, quiet)
        live[sock.fileno()] = conn
        selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, conn)
        _next_stage(conn)

    def finish(conn: _Conn, end: str) -> None:
        if conn.outcome.end == "open":
            conn.outcome.end = end
        selector.unregister(conn.sock)
        del live[conn.sock.fileno()]
        conn.sock.close()
        outcomes.append(conn.outcome)

    while pending or live:
        while pending and len(live) < concurrency:
            launch(pending.pop())
        now = time.monotonic()
        for conn in [c for c in live.values() if c.deadline <= now]:
            finish(conn, "open")
        for key, events in selector.select(timeout=0.05):
            conn = key.data
            if events & selectors.EVENT_WRITE:
                if not _write(conn):
                    finish(conn, "reset")
                    continue
            if events & selectors.EVENT_READ:
                end = _read(conn)
                if end is not None:
                    finish(conn, end)
                    continue
            wanted = selectors.EVENT_READ | (
                selectors.EVENT_WRITE if conn.outbox or conn.chunked or conn.replies else 0
            )
            if key.events != wanted:
                selector.modify(conn.sock, wanted, conn)
    selector.close()
    return outcomes


def _next_stage(conn: _Conn) -> None:
    data, conn.waiting_for, frames = conn.stages.pop(0)
    conn.outcome.frames_sent += frames
    if conn.waiting_for is None:
        # The hostile bytes: maybe in small writes, then the probe.
        case = conn.case
        conn.owed = _wants_probe(case) or (
            case.handshake == "full" and bool(frame_level_error(case.payload()))
        )
        conn.wait()
        chunk = conn.case.chunk if len(data) <= 4096 else 0
        if chunk:
            conn.chunked = [data[i : i + chunk] for i in range(0, len(data), chunk)]
            data = b""
        if _wants_probe(conn.case):
            conn.outcome.probe_sent = True
            probe = channel_open(PROBE_CHANNEL).encode()
            if conn.chunked:
                conn.chunked.append(probe)
            else:
                data += probe
    conn.outbox += data


def _write(conn: _Conn) -> bool:
    if not conn.outbox and conn.chunked:
        conn.outbox += conn.chunked.pop(0)
    elif not conn.outbox:
        # Only between writes of the case's bytes: a reply must not land inside a chunked frame.
        conn.outbox += conn.replies
        conn.replies.clear()
    if not conn.outbox:
        return True
    try:
        sent = conn.sock.send(conn.outbox)
    except BlockingIOError:
        return True
    except OSError:
        return False
    del conn.outbox[:sent]
    return True


def _read(conn: _Conn) -> str | None:
    """Take what arrived; the end ("closed", "reset") once the socket is done."""
    try:
        data = conn.sock.recv(1 << 18)
    except BlockingIOError:
        return None
    except OSError:
        return "reset"
    if not data:
        return "closed"
    conn.inbox += data
    outcome = conn.outcome
    inbox = conn.inbox
    while inbox:
        if inbox.startswith(b"AMQP") or (not conn.frames_received and inbox[:1] not in (b"\x01", b"\x08")):
            outcome.header_reply += bytes(inbox)
            inbox.clear()
            break
        if len(inbox) < 7:
            break
        kind, channel, size = _FRAME_HEAD.unpack_from(inbox)
        if len(inbox) < size + 8:
            break
        payload = bytes(inbox[7 : 7 + size])
        del inbox[: size + 8]
        conn.frames_received += 1
        if kind != 1 or len(payload) < 4:
            continue
        method = struct.unpack_from(">I", payload)[0]
        if method == _CONNECTION_CLOSE:
            code = struct.unpack_from(">H", payload, 4)[0]
            text = payload[7 : 7 + payload[6]].decode("utf-8", "replace")
            class_id, method_id = struct.unpack_from(">HH", payload, 7 + payload[6])
            outcome.connection_close = (code, class_id, method_id, text)
            conn.replies += _CONNECTION_CLOSE_OK
            conn.owed = False
        elif method == _CONNECTION_CLOSE_OK_ID:
            outcome.close_ok = True
            conn.owed = False
        elif method == _CHANNEL_CLOSE:
            code = struct.unpack_from(">H", payload, 4)[0]
            class_id, method_id = struct.unpack_from(">HH", payload, 7 + payload[6])
            outcome.channel_closes.append((channel, code, class_id, method_id))
            conn.replies += method_frame(channel, 20, 41).encode()
        elif method == _CHANNEL_OPEN_OK and channel == PROBE_CHANNEL and outcome.probe_sent:
            # Alive after everything it was sent. Errors found by other processes than the one that
            # reads (RabbitMQ's channel processes) may still be on their way: a short grace for them.
            outcome.probe_answered = True
            conn.owed = False
            conn.deadline = time.monotonic() + min(conn.quiet, _PROBE_GRACE)
            continue
        if conn.waiting_for is not None and method == conn.waiting_for:
            if method == _OPEN_OK:
                outcome.handshake_done = True
            _next_stage(conn)
        elif conn.waiting_for is None and not outcome.probe_answered:
            conn.wait()
    return None


@dataclass
class Tally:
    """Totals over many runs: what the report prints."""

    connections: int = 0
    frames: int = 0
    signatures: Counter[str] = field(default_factory=Counter)
    codes: Counter[str] = field(default_factory=Counter)

    def add(self, outcomes: Iterable[Outcome]) -> None:
        for outcome in outcomes:
            self.connections += 1
            self.frames += outcome.frames_sent
            self.signatures[outcome.signature()] += 1
            for _, code, _, _ in outcome.channel_closes:
                self.codes[f"channel.close {code}"] += 1
            if outcome.connection_close:
                self.codes[f"connection.close {outcome.code}"] += 1
            elif outcome.close_ok:
                self.codes["connection.close-ok (the client closed)"] += 1
            elif outcome.end != "open":
                self.codes["closed without connection.close"] += 1
            elif not outcome.probe_sent:
                self.codes["left open, in the middle of a frame or the handshake"] += 1
            elif not outcome.probe_answered:
                self.codes["left open, no answer to the probe"] += 1
            else:
                self.codes["open and answering"] += 1

    @property
    def internal_errors(self) -> int:
        return self.codes["connection.close 541"] + self.codes["channel.close 541"]

    def report(self) -> str:
        lines = [
            f"{self.frames} frames over {self.connections} connections; 541 INTERNAL_ERROR: "
            f"{self.internal_errors}",
            "codes:",
        ]
        lines += [f"  {count:8d}  {code}" for code, count in self.codes.most_common()]
        return "\n".join(lines)
