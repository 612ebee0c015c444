"""The peer link's frames, without sockets: round trips under any split of the stream, and garbage."""

from __future__ import annotations

import random
import struct

import pytest

from leveret.broker.cluster.peer_protocol import (
    HEARTBEAT_FRAME,
    VERSION,
    FrameDecoder,
    Heartbeat,
    Hello,
    PeerProtocolError,
    PeerVersionMismatch,
    Reply,
    Request,
    check_hello,
    encode_hello,
    encode_reply,
    encode_request,
)


def _stream() -> tuple[bytes, list[object]]:
    frames = [
        encode_hello("c1", "node1"),
        HEARTBEAT_FRAME,
        encode_request(1, "entries", b"x" * 1000),
        encode_request(2, "entries", b""),
        encode_reply(1, True, b"ack"),
        encode_reply(2, False, b"no"),
    ]
    expected = [
        Hello("c1", "node1"),
        Heartbeat(),
        Request(1, "entries", b"x" * 1000),
        Request(2, "entries", b""),
        Reply(1, True, b"ack"),
        Reply(2, False, b"no"),
    ]
    return b"".join(frames), expected


def test_frames_round_trip_whole() -> None:
    data, expected = _stream()
    assert FrameDecoder().feed(data) == expected


@pytest.mark.parametrize("seed", range(20))
def test_frames_round_trip_under_any_split(seed: int) -> None:
    data, expected = _stream()
    rng = random.Random(seed)
    decoder = FrameDecoder()
    got: list[object] = []
    offset = 0
    while offset < len(data):
        step = rng.randint(1, 40)
        got += decoder.feed(data[offset : offset + step])
        offset += step
    assert got == expected
    assert decoder.buffered == 0


def test_a_partial_frame_waits_for_the_rest() -> None:
    frame = encode_request(7, "k", b"abc")
    decoder = FrameDecoder()
    assert decoder.feed(frame[:-1]) == []
    assert decoder.feed(frame[-1:]) == [Request(7, "k", b"abc")]


@pytest.mark.parametrize(
    "data",
    [
        struct.pack(">IB", 0, 3),  # length 0
        struct.pack(">IB", 2**31, 3),  # longer than any frame may be
        struct.pack(">IB", 1, 99),  # unknown type
        struct.pack(">IB", 4, 3) + b"abc",  # request too short
        struct.pack(">IBQB", 10, 3, 1, 0),  # empty kind
        struct.pack(">IBQB", 11, 3, 1, 5) + b"a",  # kind longer than the frame
        struct.pack(">IBQB", 10, 4, 1, 7),  # reply status unknown
        struct.pack(">IB", 3, 1) + b"{}",  # hello without its fields
        struct.pack(">IB", 3, 1) + b"\xff\xfe",  # hello not JSON
    ],
)
def test_garbage_is_a_protocol_error(data: bytes) -> None:
    with pytest.raises(PeerProtocolError):
        FrameDecoder().feed(data)


def test_kind_must_be_short_ascii() -> None:
    with pytest.raises(ValueError):
        encode_request(1, "", b"")
    with pytest.raises(ValueError):
        encode_request(1, "k" * 256, b"")


def test_hello_checks() -> None:
    hello = Hello("c1", "node2")
    assert check_hello(hello, "c1", {"node2", "node3"}) == hello
    with pytest.raises(PeerProtocolError, match="another cluster"):
        check_hello(hello, "c2", "node2")
    with pytest.raises(PeerProtocolError, match="not expected"):
        check_hello(hello, "c1", "node3")
    with pytest.raises(PeerProtocolError, match="version"):
        check_hello(Hello("c1", "node2", 9), "c1", "node2")
    with pytest.raises(PeerProtocolError, match="hello first"):
        check_hello(Heartbeat(), "c1", "node2")


def test_a_node_of_the_previous_format_is_refused_naming_both_versions() -> None:
    """Version 1 is what builds before the formats of session 5 (and CALL's consumer id) said: a node of
    such a build would misread this one's batches and replication payloads."""
    hello = FrameDecoder().feed(encode_hello("c1", "node2", version=1))[0]
    with pytest.raises(PeerVersionMismatch) as refused:
        check_hello(hello, "c1", "node2")
    assert (refused.value.node, refused.value.theirs, refused.value.ours) == ("node2", 1, VERSION)
    assert str(refused.value).startswith(
        f"node 'node2' speaks peer protocol version 1, this node version {VERSION}"
    )


def test_a_limited_feed_cuts_only_the_first_frames_and_hands_the_rest_over() -> None:
    """The handshake reads one small frame; what follows it, however large, is the link's."""
    big = encode_request(7, "entries", b"y" * 10_000)
    decoder = FrameDecoder(max_frame=4096)
    frames = decoder.feed(encode_hello("c1", "node2") + big[:5000], limit=1)
    assert [type(f).__name__ for f in frames] == ["Hello"]
    rest = decoder.take_buffered()
    assert rest == big[:5000] and decoder.buffered == 0
    assert FrameDecoder().feed(rest + big[5000:]) == [Request(7, "entries", b"y" * 10_000)]
