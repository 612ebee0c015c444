"""Each class of hostile input the wire fuzzer (tests/wirefuzz/) found, with RabbitMQ's answer to it.

The same bytes go to Leveret and to RabbitMQ (`LEVERET_INTEROP_BROKER=rabbitmq`), over a raw socket
after a real handshake (pika's captured start-ok, tune-ok and open), and the connection's fate is
checked: the connection.close reply code (and the class and method it names), the channel.close codes,
a protocol header sent back, or a connection that stays open and still answers a channel.open.

Where RabbitMQ 3.10 crashes on an input (its reader or channel process dies, and the client gets 541
INTERNAL_ERROR or a bare TCP close), Leveret answers with the error RabbitMQ meant to send; those
classes check only that RabbitMQ closes the connection.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import pytest
from pamqp import frame
from pamqp.commands import Basic, Channel, Connection, Queue

from interop.brokers import Broker
from interop.conftest import BROKER_KIND
from tests.wirefuzz.cases import SESSIONS, Case
from tests.wirefuzz.runner import Outcome, run_cases

OPEN_1 = frame.marshal(Channel.Open(), 1)


def method(channel: int, value: object) -> bytes:
    return frame.marshal(value, channel)


def raw_frame(kind: int, channel: int, payload: bytes, end: int = 0xCE, size: int | None = None) -> bytes:
    return struct.pack(">BHI", kind, channel, len(payload) if size is None else size) + payload + bytes([end])


def raw_method(channel: int, class_id: int, method_id: int, arguments: bytes = b"") -> bytes:
    return raw_frame(1, channel, struct.pack(">HH", class_id, method_id) + arguments)


def content_header(
    channel: int, body_size: int, properties: bytes = b"\x00\x00", class_id: int = 60, weight: int = 0
) -> bytes:
    return raw_frame(2, channel, struct.pack(">HHQ", class_id, weight, body_size) + properties)


def body(channel: int, data: bytes) -> bytes:
    return raw_frame(3, channel, data)


PUBLISH_1 = method(1, Basic.Publish(exchange="", routing_key="nowhere"))
# pika's own start-ok, as captured (its client properties and capabilities included).
GUEST_START_OK = next(session for session in SESSIONS if session.client == "pika").handshake[0].encode()
MISSING_QUEUE = method(1, Queue.Declare(queue="hostile-missing", passive=True))
DECLARE_ARGS = method(1, Queue.Declare(queue="hostile-q", arguments={"x-max-length": 5}))


@dataclass(frozen=True)
class Hostile:
    name: str
    data: bytes
    # The connection.close RabbitMQ sends: (code, class id, method id); None: it stays open.
    close: tuple[int, int, int] | None
    channel_closes: tuple[int, ...] = ()
    handshake: str = "full"  # "header": after connection.start only; "raw": before any header
    rabbitmq_crashes: bool = False  # RabbitMQ 3.10's own answer is a crash: check only that it closes
    # RabbitMQ's close where it knowingly differs from Leveret's (said why above each); "same": none.
    rabbitmq: tuple[int, int, int] | None | str = "same"
    header_reply: bool = False


CLASSES = [
    # ---- framing -------------------------------------------------------------------------------
    Hostile(
        "bad frame-end octet", OPEN_1 + raw_frame(1, 1, b"\x00\x3c\x00\x0a" + b"\x00" * 7, end=0), (501, 0, 0)
    ),
    Hostile("frame over frame_max", OPEN_1 + raw_frame(1, 1, b"", size=200000), (501, 0, 0)),
    Hostile("unknown frame type 4", OPEN_1 + raw_frame(4, 1, b"abc"), (501, 0, 0)),
    Hostile("unknown frame type 0", raw_frame(0, 0, b""), (501, 0, 0)),
    Hostile("heartbeat on channel 1", OPEN_1 + raw_frame(8, 1, b""), (505, 0, 0)),
    Hostile("heartbeat with a payload", raw_frame(8, 0, b"xyz"), (501, 0, 0)),
    Hostile("content header on an unopened channel", content_header(3, 0), (505, 0, 0)),
    Hostile("body on an unopened channel", body(3, b"abc"), (505, 0, 0)),
    Hostile("method on an unopened channel", method(3, Basic.Qos(prefetch_count=1)), (504, 60, 10)),
    Hostile("content header with no publish", OPEN_1 + content_header(1, 3), (505, 0, 0)),
    Hostile("body with no publish", OPEN_1 + body(1, b"abc"), (505, 0, 0)),
    Hostile(
        "method where a content header is due", OPEN_1 + PUBLISH_1 + method(1, Basic.Qos()), (505, 60, 40)
    ),
    Hostile(
        "method where a body is due",
        OPEN_1 + PUBLISH_1 + content_header(1, 3) + method(1, Basic.Qos()),
        (505, 60, 40),
    ),
    # RabbitMQ keeps waiting for a body that can never complete (the next method on the channel gets 505).
    Hostile(
        "body frame longer than announced",
        OPEN_1 + PUBLISH_1 + content_header(1, 3) + body(1, b"abcdef"),
        (501, 0, 0),
        rabbitmq=None,
    ),
    Hostile(
        "bodies adding up to more than announced",
        OPEN_1 + PUBLISH_1 + content_header(1, 4) + body(1, b"abc") + body(1, b"abc"),
        (501, 0, 0),
        rabbitmq=None,
    ),
    Hostile(
        "body shorter than announced, then a method",
        OPEN_1 + PUBLISH_1 + content_header(1, 4) + body(1, b"ab") + method(1, Basic.Qos()),
        (505, 60, 40),
    ),
    Hostile(
        "content header of class 50", OPEN_1 + PUBLISH_1 + content_header(1, 0, class_id=50), (505, 60, 40)
    ),
    Hostile(
        "content header too short", OPEN_1 + PUBLISH_1 + raw_frame(2, 1, b"\x00\x3c\x00\x00"), (501, 0, 0)
    ),
    Hostile(
        "content header with a weight", OPEN_1 + PUBLISH_1 + content_header(1, 0, weight=1), (505, 60, 40)
    ),
    # Content properties are decoded by RabbitMQ's channel process, which crashes on these.
    Hostile(
        "property flags promising absent fields",
        OPEN_1 + PUBLISH_1 + content_header(1, 0, b"\xff\xfc"),
        (502, 60, 40),
        rabbitmq_crashes=True,
    ),
    Hostile(
        "property flags with a continuation word",
        OPEN_1 + PUBLISH_1 + content_header(1, 0, b"\x00\x01\x00\x00"),
        None,
        rabbitmq_crashes=True,
    ),
    # A channel the broker is closing still has its content checked (and dropped).
    Hostile(
        "content on a closing channel",
        OPEN_1 + MISSING_QUEUE + PUBLISH_1 + content_header(1, 3) + body(1, b"abc"),
        None,
        channel_closes=(404,),
    ),
    Hostile(
        "publish on a closing channel, then channel.close-ok",
        OPEN_1 + MISSING_QUEUE + PUBLISH_1 + method(1, Channel.CloseOk()),
        (505, 60, 40),
        channel_closes=(404,),
    ),
    Hostile(
        "property list cut short, to a headers exchange",
        OPEN_1
        + method(1, Basic.Publish(exchange="amq.headers"))
        + content_header(1, 0, b"\x00\x0c\x05guest"),
        (502, 60, 40),
        rabbitmq_crashes=True,
    ),
    # ---- methods -------------------------------------------------------------------------------
    Hostile("method frame of 2 bytes", OPEN_1 + raw_frame(1, 1, b"\x00\x3c"), (501, 0, 0)),
    Hostile("truncated arguments", OPEN_1 + raw_frame(1, 1, DECLARE_ARGS[7:-1][:-6]), (501, 50, 10)),
    Hostile(
        "trailing bytes after the arguments",
        OPEN_1 + raw_frame(1, 1, DECLARE_ARGS[7:-1] + b"\x00\x01"),
        (501, 50, 10),
    ),
    Hostile(
        "bits octet missing from basic.publish", OPEN_1 + raw_frame(1, 1, PUBLISH_1[7:-2]), (501, 60, 40)
    ),
    Hostile("short string past the end", OPEN_1 + raw_method(1, 50, 10, b"\x00\x00\x80abc"), (501, 50, 10)),
    Hostile(
        "invalid UTF-8 in a queue name",
        OPEN_1 + raw_method(1, 50, 10, b"\x00\x00\x02\xc3\x28\x00\x00\x00\x00\x00"),
        (501, 0, 0),
    ),
    Hostile("basic.ack of 12 bytes", OPEN_1 + raw_method(1, 60, 80, b"\x00" * 8), (501, 60, 80)),
    # RabbitMQ 3.10 answers some unknown ids with 501 "cannot decode" and crashes on others.
    Hostile(
        "unknown method of basic", OPEN_1 + raw_method(1, 60, 200), (540, 60, 200), rabbitmq=(501, 60, 200)
    ),
    Hostile("unknown class", OPEN_1 + raw_method(1, 99, 10), (540, 99, 10), rabbitmq_crashes=True),
    # RabbitMQ waits for the content of a basic.deliver (it carries content) before it refuses it.
    Hostile(
        "basic.deliver from the client",
        OPEN_1 + method(1, Basic.Deliver(consumer_tag="c", delivery_tag=1, exchange="", routing_key="q")),
        (503, 60, 60),
        rabbitmq=None,
    ),
    Hostile("channel.open-ok from the client", OPEN_1 + method(1, Channel.OpenOk()), (503, 20, 11)),
    Hostile("unsolicited channel.close-ok", OPEN_1 + method(1, Channel.CloseOk()), (503, 20, 41)),
    Hostile("unsolicited connection.close-ok", method(0, Connection.CloseOk()), (504, 10, 51)),
    Hostile("connection.tune-ok after open", method(0, Connection.TuneOk(2047, 131072, 60)), (504, 10, 31)),
    Hostile(
        "connection.start from the client",
        method(0, Connection.Start(server_properties={}, mechanisms="PLAIN", locales="en_US")),
        (504, 10, 10),
    ),
    Hostile("second channel.open", OPEN_1 + OPEN_1, (504, 20, 10)),
    Hostile("basic.qos on channel 0", method(0, Basic.Qos()), (504, 60, 10)),
    Hostile("channel.flow active=false", OPEN_1 + method(1, Channel.Flow(active=False)), (540, 20, 20)),
    Hostile("prefetch_size", OPEN_1 + method(1, Basic.Qos(prefetch_size=10)), (540, 60, 10)),
    Hostile(
        "immediate publish",
        OPEN_1 + method(1, Basic.Publish(routing_key="q", immediate=True)) + content_header(1, 0),
        (540, 60, 40),
    ),
    Hostile("basic.recover requeue=false", OPEN_1 + method(1, Basic.Recover(requeue=False)), (540, 60, 110)),
    Hostile(
        "arguments table running past the frame",
        OPEN_1 + raw_method(1, 50, 10, b"\x00\x00\x01q\x00\x00\x00\x00\x40"),
        (501, 50, 10),
    ),
    # ---- handshake -----------------------------------------------------------------------------
    Hostile("AMQP 0-10 header", b"AMQP\x01\x01\x00\x0a", None, handshake="raw", header_reply=True),
    Hostile("HTTP request", b"GET / HTTP/1.1\r\n\r\n", None, handshake="raw", header_reply=True),
    # Before start-ok is done RabbitMQ closes without a word, after a delay (a refused login aside).
    Hostile("channel.open before connection.open", method(1, Channel.Open()), None, handshake="header"),
    Hostile("heartbeat on channel 1 during the handshake", raw_frame(8, 1, b""), None, handshake="header"),
    Hostile("content header during the handshake", content_header(1, 0), None, handshake="header"),
    Hostile(
        "unknown mechanism",
        method(0, Connection.StartOk(mechanism="CRAM", response="x")),
        None,
        handshake="header",
    ),
    Hostile(
        "malformed PLAIN response",
        method(0, Connection.StartOk(mechanism="PLAIN", response="guest")),
        None,
        handshake="header",
    ),
    Hostile("tune-ok before start-ok", method(0, Connection.TuneOk(0, 131072, 0)), None, handshake="header"),
    # RabbitMQ means to answer 530 here but drops the socket (see interop/test_tune.py); Leveret answers.
    Hostile(
        "tune-ok with frame_max over the offer",
        GUEST_START_OK + method(0, Connection.TuneOk(2047, 10**7, 0)),
        (530, 10, 30),
        handshake="header",
        rabbitmq=None,
    ),
    Hostile(
        "refused login, with authentication_failure_close",
        method(
            0,
            Connection.StartOk(
                client_properties={"capabilities": {"authentication_failure_close": True}},
                mechanism="PLAIN",
                response="\0guest\0wrong",
            ),
        ),
        (403, 0, 0),
        handshake="header",
    ),
    Hostile(
        "refused login",
        method(0, Connection.StartOk(mechanism="PLAIN", response="\0guest\0wrong")),
        None,
        handshake="header",
    ),
    # After tune-ok the errors are answered.
    Hostile(
        "unknown vhost, bare start-ok",
        method(0, Connection.StartOk(mechanism="PLAIN", response="\0guest\0guest"))
        + method(0, Connection.TuneOk(2047, 131072, 0))
        + method(0, Connection.Open(virtual_host="nowhere")),
        (530, 10, 40),
        handshake="header",
    ),
    Hostile(
        "unknown vhost",
        GUEST_START_OK
        + method(0, Connection.TuneOk(2047, 131072, 0))
        + method(0, Connection.Open(virtual_host="nowhere")),
        (530, 10, 40),
        handshake="header",
    ),
    Hostile(
        "channel.open before connection.open, after tune-ok",
        GUEST_START_OK + method(0, Connection.TuneOk(2047, 131072, 0)) + method(1, Channel.Open()),
        (505, 0, 0),
        handshake="header",
    ),
]


def _run(broker: Broker, hostile: Hostile) -> Outcome:
    case = Case("pika", hostile.handshake, raw_prefix=hostile.data)
    # RabbitMQ waits a few seconds before it closes a connection whose handshake failed.
    [outcome] = run_cases(broker.host, broker.port, [case], quiet=1.0 if hostile.handshake == "full" else 5.0)
    return outcome


@pytest.mark.parametrize("hostile", CLASSES, ids=lambda h: h.name)
def test_hostile_input_gets_rabbitmqs_answer(broker: Broker, hostile: Hostile) -> None:
    outcome = _run(broker, hostile)
    seen = outcome.connection_close[:3] if outcome.connection_close else None
    print(f"{hostile.name}: {seen} {outcome.channel_closes} {outcome.signature()} {outcome.connection_close}")
    expected = hostile.close
    if BROKER_KIND == "rabbitmq":
        if hostile.rabbitmq_crashes:
            assert outcome.end != "open" or outcome.connection_close is not None
            return
        if hostile.rabbitmq != "same":
            expected = hostile.rabbitmq
    assert seen == expected, outcome.connection_close
    assert tuple(code for _, code, _, _ in outcome.channel_closes) == hostile.channel_closes
    assert bool(outcome.header_reply) == hostile.header_reply
    if expected is None and not hostile.header_reply:
        # Left open and answering after a full handshake; closed without a word before tune-ok.
        assert outcome.probe_answered if hostile.handshake == "full" else outcome.end != "open", (
            outcome.signature()
        )
