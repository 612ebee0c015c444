"""connection.tune-ok outside what the server offered is refused.

RabbitMQ 3.10.8 means to answer connection.close 530 NOT_ALLOWED naming the bound (rabbit_reader's
handle_exception for the tuning state), but the error reaches it wrapped, so it logs "failed to negotiate
connection parameters: <the text>", waits 3 s and drops the socket without a close frame. Leveret sends
the close it meant, with that text. Either way no connection gets opened.
"""

from __future__ import annotations

import socket

import pytest
from pamqp import frame
from pamqp.commands import Connection

from interop.brokers import Broker


def _answer_tune(broker: Broker, channel_max: int, frame_max: int) -> Connection.Close | None:
    """The connection.close the broker answers, or None if it drops the connection without one."""
    with socket.create_connection((broker.host, broker.port), timeout=10) as sock:
        sock.sendall(b"AMQP\x00\x00\x09\x01")
        received = b""
        start_ok = Connection.StartOk(
            client_properties={}, mechanism="PLAIN", response="\0guest\0guest", locale="en_US"
        )
        replies = [start_ok, Connection.TuneOk(channel_max=channel_max, frame_max=frame_max, heartbeat=0)]
        while True:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                return None
            if not data:
                return None
            received += data
            while received:
                try:
                    consumed, _, value = frame.unmarshal(received)
                except Exception:
                    break
                received = received[consumed:]
                if isinstance(value, Connection.Close):
                    return value
                if isinstance(value, (Connection.Start, Connection.Tune)):
                    sock.sendall(frame.marshal(replies.pop(0), 0))


@pytest.mark.parametrize(
    ("channel_max", "frame_max", "text"),
    [
        (0, 131072, "negotiated channel_max = 0 (no limit) is higher than the maximum allowed value (2047)"),
        (2047, 0, "negotiated frame_max = 0 is higher than the maximum allowed value (131072)"),
        (2047, 1000, "negotiated frame_max = 1000 is lower than the minimum allowed value (4096)"),
    ],
)
def test_tune_ok_outside_the_offer(broker: Broker, channel_max: int, frame_max: int, text: str) -> None:
    close = _answer_tune(broker, channel_max, frame_max)
    if close is None:
        assert broker.kind == "rabbitmq"
        return
    assert (close.reply_code, close.reply_text) == (530, f"NOT_ALLOWED - {text}")
    assert (close.class_id, close.method_id) == (10, 30)
