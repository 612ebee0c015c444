"""Framing and the fast-path codec: property tests against pamqp, the reference codec."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pamqp import frame as pamqp_frame
from pamqp import header
from pamqp.commands import Basic

from leveret.amqp import fastpath
from leveret.amqp.codec import build, decode_method
from leveret.amqp.errors import ConnectionLevelError
from leveret.amqp.framing import FrameReader, encode_frame
from leveret.amqp.properties import decode_properties, peek_properties, properties_from_dict

names = st.text(max_size=40).filter(lambda s: len(s.encode()) <= 255)
frames = st.lists(
    st.tuples(st.sampled_from([1, 2, 3]), st.integers(0, 2047), st.binary(max_size=300)), max_size=20
)


@given(frames, st.lists(st.integers(1, 50), min_size=1, max_size=30))
def test_frames_survive_any_split_of_the_stream(items: list, cuts: list[int]) -> None:
    stream = b"".join(encode_frame(t, c, p) for t, c, p in items)
    reader = FrameReader(frame_max=131072)
    out = []
    pos = 0
    for cut in cuts * (len(stream) // max(1, sum(cuts)) + 1):
        if pos >= len(stream):
            break
        reader.feed(stream[pos : pos + cut])
        pos += cut
        while (frame := reader.next_frame()) is not None:
            out.append(frame)
    reader.feed(stream[pos:])
    while (frame := reader.next_frame()) is not None:
        out.append(frame)
    assert out == items


def test_frame_larger_than_frame_max_is_refused() -> None:
    reader = FrameReader(frame_max=4096)
    reader.feed(encode_frame(3, 1, b"x" * 5000))
    with pytest.raises(ConnectionLevelError) as raised:
        reader.next_frame()
    assert raised.value.code == 501


@given(names, names, st.booleans(), st.booleans())
def test_publish_fast_path_agrees_with_pamqp(
    exchange: str, routing_key: str, mandatory: bool, immediate: bool
) -> None:
    # build(): pamqp's own marshalling, without its client-side check of exchange names.
    method = build(
        Basic.Publish, exchange=exchange, routing_key=routing_key, mandatory=mandatory, immediate=immediate
    )
    raw = pamqp_frame.marshal(method, 1)
    names = fastpath.names_raw(exchange, routing_key)
    assert decode_method(raw[7:-1]) == fastpath.Publish(exchange, routing_key, mandatory, immediate, names)


@given(st.integers(0, 2**63 - 1), st.booleans(), st.booleans())  # pamqp encodes tags signed
def test_ack_nack_reject_fast_paths_agree_with_pamqp(tag: int, multiple: bool, requeue: bool) -> None:
    assert decode_method(pamqp_frame.marshal(Basic.Ack(tag, multiple), 1)[7:-1]) == fastpath.Ack(
        tag, multiple
    )
    nack = pamqp_frame.marshal(Basic.Nack(tag, multiple, requeue), 1)[7:-1]
    assert decode_method(nack) == fastpath.Nack(tag, multiple, requeue)
    reject = pamqp_frame.marshal(Basic.Reject(tag, requeue), 1)[7:-1]
    assert decode_method(reject) == fastpath.Reject(tag, requeue)


@given(names, st.integers(1, 2**63 - 1), st.booleans(), names, names, st.binary(max_size=10000))
def test_deliver_fast_path_decodes_with_pamqp(
    consumer_tag: str, tag: int, redelivered: bool, exchange: str, routing_key: str, body: bytes
) -> None:
    properties_raw = properties_from_dict({"delivery_mode": 2, "headers": {"k": "v"}})
    stream = b"".join(
        fastpath.deliver_frames(
            3,
            fastpath.shortstr(consumer_tag),
            tag,
            redelivered,
            fastpath.names_raw(exchange, routing_key),
            properties_raw,
            body,
            4096,
        )
    )
    decoded = []
    while stream:
        consumed, channel, value = pamqp_frame.unmarshal(stream)
        assert channel == 3 and consumed <= 4096
        decoded.append(value)
        stream = stream[consumed:]
    deliver, content_header, *bodies = decoded
    assert (deliver.consumer_tag, deliver.delivery_tag, deliver.redelivered) == (
        consumer_tag,
        tag,
        redelivered,
    )
    assert (deliver.exchange, deliver.routing_key) == (exchange, routing_key)
    assert isinstance(content_header, header.ContentHeader) and content_header.body_size == len(body)
    assert content_header.properties.headers == {"k": "v"}
    assert b"".join(b.value for b in bodies) == body


properties = st.fixed_dictionaries(
    {},
    optional={
        "content_type": st.text(max_size=10),
        "headers": st.dictionaries(st.text(max_size=5), st.integers(-1000, 1000), max_size=3),
        "delivery_mode": st.sampled_from([1, 2]),
        "priority": st.integers(0, 9),
        "correlation_id": st.text(max_size=10),
        "reply_to": st.text(max_size=10),
        "expiration": st.integers(0, 10**6).map(str),
        "message_id": st.text(max_size=10),
        "message_type": st.text(max_size=10),
        "user_id": st.text(max_size=10),
        "app_id": st.text(max_size=10),
    },
)


@given(properties)
def test_peek_agrees_with_full_decode(values: dict) -> None:
    raw = properties_from_dict(values)
    delivery_mode, priority, expiration, user_id = peek_properties(raw)
    decoded = decode_properties(raw)
    assert delivery_mode == (decoded.delivery_mode or 1)
    assert priority == (decoded.priority or 0)
    assert expiration == decoded.expiration
    assert user_id == decoded.user_id


def test_large_frame_arriving_in_many_reads_is_joined_once_and_intact() -> None:
    payload = bytes(range(256)) * 8192  # 2 MiB: collected as a list of reads, not re-copied per read
    stream = encode_frame(3, 1, payload) + encode_frame(1, 1, b"next")
    reader = FrameReader(frame_max=4 * 1024 * 1024)
    frames = []
    for start in range(0, len(stream), 65536):
        reader.feed(stream[start : start + 65536])
        while (frame := reader.next_frame()) is not None:
            frames.append(frame)
    assert frames == [(3, 1, payload), (1, 1, b"next")]
