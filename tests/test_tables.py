"""Field tables: the iterative walk against pamqp's decoding, any depth, RabbitMQ's refusals."""

from __future__ import annotations

import struct
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from leveret.amqp.properties import HEADERS, decode_properties, properties_from_dict, split_properties
from leveret.amqp.tables import TableError, decoded, split_array, split_table, walk_table


def _table(entries: bytes) -> bytes:
    return struct.pack(">I", len(entries)) + entries


def test_the_walk_decodes_as_pamqp_does() -> None:
    headers = {
        "s": "text", "n": 5, "big": 2**40, "neg": -3, "f": 1.5, "none": None, "yes": True,
        "when": datetime(2020, 1, 1, tzinfo=UTC), "dec": Decimal("1.5"),
        "nested": {"list": [1, "two", {"three": 3}], "empty": {}},
    }
    raw = properties_from_dict({"headers": headers, "content_type": "text/plain"})
    field = split_properties(raw)[HEADERS]
    assert walk_table(field) == headers
    assert decode_properties(raw).headers == headers
    assert decode_properties(raw).content_type == "text/plain"
    entries = dict(split_table(field))
    assert decoded(entries["nested"]) == headers["nested"]
    assert [decoded(item) for item in split_array(dict(split_table(entries["nested"][1:]))["list"])] == [
        1, "two", {"three": 3}
    ]


def test_any_depth_is_walked_without_recursion() -> None:
    table = _table(b"")
    for _ in range(10_000):  # pamqp's recursive decoder gives up near 500
        table = _table(b"\x01nF" + table)
    value = walk_table(table)
    depth = 0
    while value:
        value = value["n"]
        depth += 1
    assert depth == 10_000


def test_strings_that_are_not_utf8_stay_bytes() -> None:
    table = walk_table(_table(b"\x02\xff\xfeS\x00\x00\x00\x02\xfe\xff"))
    assert table == {b"\xff\xfe".decode("utf-8", "surrogateescape"): b"\xfe\xff"}


@pytest.mark.parametrize(
    "field",
    [
        _table(b"\x01aZ\x00\x00"),  # unknown field type
        _table(b"\x01a\x00"),  # pamqp reads \x00 as void; RabbitMQ does not
        _table(b"\x01aS\x00\x00\x00\x50abc"),  # a value past the end
        _table(b"\x05a"),  # a key past the end
        _table(b"\x01aF" + struct.pack(">I", 9)),  # a nested table past its parent
        struct.pack(">I", 1000) + b"\x01aS",  # the table past its bytes
    ],
)
def test_what_rabbitmq_refuses_is_refused(field: bytes) -> None:
    with pytest.raises(TableError):
        walk_table(field, build=False)
