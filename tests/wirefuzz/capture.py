"""Record what real clients send, as the fuzzer's corpus: `python -m tests.wirefuzz.capture`.

A recording proxy sits between a client and a Leveret broker started for the purpose; every frame
the client sends (after the protocol header) is written to `tests/data/captured/<client>.json` as
`[frame type, channel, payload hex]` (a body frame: its size instead of its bytes). The pika session
is below, the amqplib one is `interop/node/capture_session.js`. The files are committed; rerun this
after changing either session.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import pika

from interop.brokers import HOST, LeveretBroker
from interop.clients import NODE_DIR

CAPTURED = Path(__file__).resolve().parent.parent / "data" / "captured"


class RecordingProxy:
    """Forwards one port to the broker and keeps every byte the clients send, per connection."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.listener = socket.create_server((HOST, 0))
        self.port = self.listener.getsockname()[1]
        self.streams: list[bytearray] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            recorded = bytearray()
            self.streams.append(recorded)
            threading.Thread(target=_pump, args=(client, server, recorded), daemon=True).start()
            threading.Thread(target=_pump, args=(server, client, None), daemon=True).start()

    def close(self) -> None:
        self.listener.close()


def _pump(source: socket.socket, sink: socket.socket, recorded: bytearray | None) -> None:
    try:
        while data := source.recv(65536):
            if recorded is not None:
                recorded += data
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def split_frames(stream: bytes) -> list[tuple[int, int, bytes]]:
    """The frames of a client stream that starts with the protocol header."""
    frames, pos = [], 8
    while pos + 7 <= len(stream):
        kind, channel, size = struct.unpack_from(">BHI", stream, pos)
        frames.append((kind, channel, stream[pos + 7 : pos + 7 + size]))
        pos += size + 8
    return frames


def _record(kind: int, channel: int, payload: bytes) -> list[object]:
    # Bodies are kept as their size only (the fuzzer fills them in), so the corpus stays small.
    return [kind, channel, len(payload) if kind == 3 else payload.hex()]


def pika_session(url: str) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.exchange_declare("capture.x", "headers", arguments={"alternate-exchange": "amq.fanout"})
    channel.queue_declare(
        "capture.q",
        arguments={"x-max-priority": 5, "x-dead-letter-exchange": "amq.direct", "x-expires": 600000},
    )
    channel.queue_bind("capture.q", "capture.x", arguments={"x-match": "any", "kind": "a", "n": 7})
    channel.basic_qos(prefetch_count=5)
    properties = pika.BasicProperties(
        content_type="application/json",
        content_encoding="gzip",
        headers={
            "kind": "a",
            "n": 7,
            "big": 2**40,
            "dec": __import__("decimal").Decimal("1.25"),
            "flag": False,
            "list": [1, "x", None],
            "table": {"inner": {"deeper": b"bytes"}},
            "cc": ["capture.q"],
        },
        delivery_mode=2,
        priority=4,
        correlation_id="c-1",
        reply_to="replies",
        expiration="60000",
        message_id="m-1",
        timestamp=1700000000,
        type="t",
        user_id="guest",
        app_id="pika",
    )
    channel.basic_publish("capture.x", "", b"headers-routed", properties)
    channel.basic_publish("", "capture.q", b"x" * 300000)  # three body frames
    channel.basic_publish("", "capture.q", b"")
    channel.confirm_delivery()
    channel.basic_publish("", "capture.q", b"confirmed", mandatory=True)
    method, _, _ = channel.basic_get("capture.q")
    if method is not None:
        channel.basic_reject(method.delivery_tag, requeue=True)
    tag = channel.basic_consume("capture.q", lambda *args: None, arguments={"x-priority": 2})
    connection.process_data_events(0.3)
    channel.basic_cancel(tag)
    channel.basic_nack(0, multiple=True, requeue=True)
    channel.basic_recover(requeue=True)
    tx = connection.channel()
    tx.tx_select()
    tx.basic_publish("", "capture.q", b"in a transaction")
    tx.tx_commit()
    tx.basic_publish("", "capture.q", b"rolled back")
    tx.tx_rollback()
    tx.flow(True)
    tx.close()
    channel.queue_purge("capture.q")
    channel.queue_unbind("capture.q", "capture.x", arguments={"x-match": "any", "kind": "a", "n": 7})
    channel.exchange_declare("capture.y", "fanout", auto_delete=True)
    channel.exchange_bind("capture.y", "capture.x", "k")
    channel.exchange_unbind("capture.y", "capture.x", "k")
    channel.exchange_delete("capture.y")
    channel.queue_delete("capture.q", if_empty=False)
    channel.exchange_delete("capture.x", if_unused=True)
    channel.close()
    connection.close()


def amqplib_session(url: str) -> None:
    subprocess.run(
        ["node", str(NODE_DIR / "capture_session.js"), "capture.node"],
        env={**os.environ, "AMQP_URL": url},
        check=True,
        timeout=60,
    )


SESSIONS: dict[str, Callable[[str], None]] = {"pika": pika_session, "amqplib": amqplib_session}


def main() -> None:
    CAPTURED.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        broker = LeveretBroker(Path(work))
        broker.start()
        try:
            for name, session in SESSIONS.items():
                proxy = RecordingProxy((broker.host, broker.port))
                session(f"amqp://guest:guest@{HOST}:{proxy.port}/")
                proxy.close()
                frames = [frame for stream in proxy.streams for frame in split_frames(bytes(stream))]
                path = CAPTURED / f"{name}.json"
                path.write_text("[\n" + ",\n".join(json.dumps(_record(*frame)) for frame in frames) + "\n]\n")
                print(f"{path}: {len(frames)} frames")
        finally:
            broker.close()


if __name__ == "__main__":
    main()
