"""Exchange types: routing rules, binding validation and RabbitMQ's error texts (no sockets)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from leveret.amqp.constants import COMMAND_INVALID, PRECONDITION_FAILED
from leveret.amqp.errors import ChannelError, ConnectionLevelError
from leveret.amqp.properties import properties_from_dict
from leveret.broker.exchanges import topic
from leveret.broker.exchanges.base import Exchange
from leveret.broker.exchanges.consistent_hash import ConsistentHashExchange, jump_hash, stable_hash
from leveret.broker.exchanges.direct import DirectExchange
from leveret.broker.exchanges.erlang_terms import format_term
from leveret.broker.exchanges.fanout import FanoutExchange
from leveret.broker.exchanges.headers import HeadersExchange, same_value
from leveret.broker.exchanges.registry import EXCHANGE_TYPES, exchange_class
from leveret.broker.exchanges.topic import TopicExchange, split_words
from leveret.broker.message import Message


class Q:
    """A destination compared by identity, like a queue."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Q({self.name})"


def msg(routing_key: str = "", **properties: Any) -> Message:
    return Message("ex", routing_key, properties_from_dict(properties), b"body")


def routed(exchange: Exchange, routing_key: str = "", **properties: Any) -> list[Q]:
    return list(exchange.route(msg(routing_key, **properties)))


def rejects(exchange: Exchange, routing_key: str, arguments: dict[str, Any] | None = None) -> ChannelError:
    with pytest.raises(ChannelError) as info:
        exchange.bind(Q("q"), routing_key, arguments or {})
    assert info.value.code == PRECONDITION_FAILED
    return info.value


# --- direct ---------------------------------------------------------------------------------------


def test_direct_routes_on_exact_key_in_binding_order() -> None:
    x = DirectExchange("d")
    a, b, c = Q("a"), Q("b"), Q("c")
    x.bind(b, "k", {})
    x.bind(a, "k", {})
    x.bind(c, "other", {})
    assert routed(x, "k") == [b, a]
    assert routed(x, "other") == [c]
    assert routed(x, "K") == routed(x, "k.") == routed(x, "") == []


def test_direct_empty_key_is_an_ordinary_key() -> None:
    x = DirectExchange("d")
    q = Q("q")
    x.bind(q, "", {})
    assert routed(x, "") == [q]
    assert routed(x, "a") == []


def test_direct_same_destination_twice_counts_bindings() -> None:
    x = DirectExchange("d")
    q = Q("q")
    assert x.bind(q, "k", {})
    assert not x.bind(q, "k", {})  # identical binding: no-op
    assert x.bind(q, "k", {"x-any": 1})  # differs by arguments: a second binding
    assert routed(x, "k") == [q]
    assert x.unbind(q, "k", {})
    assert routed(x, "k") == [q]
    assert x.unbind(q, "k", {"x-any": 1})
    assert routed(x, "k") == []


def test_direct_route_reuses_its_result_until_bindings_change() -> None:
    x = DirectExchange("d")
    q, r = Q("q"), Q("r")
    x.bind(q, "k", {})
    first = x.route(msg("k"))
    assert x.route(msg("k")) is first
    x.bind(r, "k", {})
    assert list(x.route(msg("k"))) == [q, r]
    x.unbind_destination(q)
    assert routed(x, "k") == [r]


# --- fanout ---------------------------------------------------------------------------------------


def test_fanout_ignores_keys_and_arguments() -> None:
    x = FanoutExchange("f")
    a, b = Q("a"), Q("b")
    x.bind(a, "ignored", {})
    x.bind(b, "", {"whatever": True})
    x.bind(a, "another", {})
    assert routed(x, "anything") == [a, b]
    x.unbind(a, "ignored", {})
    assert routed(x, "") == [a, b]
    x.unbind_destination(a)
    assert routed(x, "x") == [b]
    x.unbind(b, "", {"whatever": True})
    assert routed(x, "x") == []
    assert not x.has_bindings()


# --- topic ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "key", "matches"),
    [
        ("#", "", True),
        ("#", "a", True),
        ("#", "a.b.c", True),
        ("#", "..", True),
        ("*", "", False),
        ("*", "a", True),
        ("*", "a.b", False),
        ("*", ".", False),
        ("", "", True),
        ("", "a", False),
        ("a", "", False),
        ("a.#.b", "a.b", True),
        ("a.#.b", "a.x.b", True),
        ("a.#.b", "a.x.y.b", True),
        ("a.#.b", "a.b.c", False),
        ("a.#.b", "ab", False),
        ("#.#", "", True),
        ("#.#", "a", True),
        ("#.#", "a.b.c", True),
        ("a..b", "a..b", True),
        ("a.*.b", "a..b", True),
        ("a.b", "a..b", False),
        ("*.*", ".", True),
        ("a.", "a.", True),
        ("a.*", "a.", True),
        ("a.*", "a", False),
        ("a.#", "a", True),
        ("#.a", "a", True),
        ("*.#", "", False),
        ("*.#", "a", True),
        ("#.*", "a.b", True),
        ("a.*.#", "a", False),
        ("#.b.#", "a.b.c", True),
        ("#.b.#", "a.c", False),
        ("a.b", "a.*", False),  # a literal '*' in a routing key is just a word
        ("a.*", "a.*", True),
        ("a.#", "a.#", True),
    ],
)
def test_topic_rules(pattern: str, key: str, matches: bool) -> None:
    x = TopicExchange("t")
    q = Q("q")
    x.bind(q, pattern, {})
    assert routed(x, key) == ([q] if matches else [])


def test_topic_more_than_two_hashes_is_refused_with_rabbitmq_text() -> None:
    x = TopicExchange("t")
    error = rejects(x, "#.a.#.#")
    assert error.text == "Topic binding key '#.a.#.#' uses 3 '#' wildcards, at most 2 are allowed"
    x.bind(Q("q"), "#.a.#", {})  # two are fine
    x.bind(Q("r"), "a#.##.#b", {})  # only whole '#' words count


def test_topic_destination_reached_by_several_patterns_appears_once() -> None:
    x = TopicExchange("t")
    q, r = Q("q"), Q("r")
    for pattern in ("a.*", "#", "a.b", "#.#", "*.#"):
        x.bind(q, pattern, {})
    x.bind(r, "a.b", {"other": 1})
    assert sorted(routed(x, "a.b"), key=repr) == [q, r]


def test_topic_unbind_prunes_the_trie_and_keeps_shared_prefixes() -> None:
    x = TopicExchange("t")
    q, r = Q("q"), Q("r")
    x.bind(q, "a.b.c", {})
    x.bind(r, "a.b", {})
    x.unbind(q, "a.b.c", {})
    assert routed(x, "a.b") == [r]
    assert routed(x, "a.b.c") == []
    x.unbind(r, "a.b", {})
    assert x._root.children == {}


def test_topic_cache_is_bounded_and_invalidated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(topic, "CACHE_SIZE", 8)
    x = TopicExchange("t")
    q, r = Q("q"), Q("r")
    x.bind(q, "a.*", {})
    for i in range(20):
        assert routed(x, f"a.{i}") == [q]
    assert len(x._cache) == 8
    x.bind(r, "#.19", {})
    assert routed(x, "a.19") == [q, r]
    x.unbind(q, "a.*", {})
    assert routed(x, "a.19") == [r]


def reference_match(pattern: list[str], words: list[str]) -> bool:
    """Topic matching by plain recursion over word lists."""
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return reference_match(rest, words) or (bool(words) and reference_match(pattern, words[1:]))
    if not words:
        return False
    return (head == "*" or head == words[0]) and reference_match(rest, words[1:])


def _topic_key(words: list[str]) -> str:
    return ".".join(words)


pattern_words = st.lists(st.sampled_from(["a", "b", "", "*", "#"]), max_size=6).filter(
    lambda words: words.count("#") <= topic.MAX_HASH_WILDCARDS
)
key_words = st.lists(st.sampled_from(["a", "b", "", "c", "*", "#"]), max_size=7)


@given(st.lists(pattern_words.map(_topic_key), min_size=1, max_size=8), st.lists(key_words, max_size=10))
@settings(max_examples=300, deadline=None)
def test_topic_trie_agrees_with_reference(patterns: list[str], keys: list[list[str]]) -> None:
    x = TopicExchange("t")
    destinations = [Q(p) for p in patterns]
    for destination, pattern in zip(destinations, patterns, strict=True):
        x.bind(destination, pattern, {})
    for key in map(_topic_key, keys):
        expected = {
            d
            for d, p in zip(destinations, patterns, strict=True)
            if reference_match(split_words(p), split_words(key))
        }
        result = x.route(msg(key))
        assert len(result) == len(set(result))
        assert set(result) == expected


# One step: ("bind" | "unbind", pattern index, destination index) or ("route", key).
topic_steps = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(["bind", "unbind"]), st.integers(0, 5), st.integers(0, 2)),
        st.tuples(st.just("route"), st.sampled_from(["", "a", "a.b", "b.a", "a..b", ".", "a.b.c"])),
    ),
    max_size=40,
)


@given(st.lists(pattern_words.map(_topic_key), min_size=6, max_size=6, unique=True), topic_steps)
@settings(max_examples=200, deadline=None)
def test_topic_cache_never_stale(patterns: list[str], steps: list[tuple]) -> None:
    x = TopicExchange("t")
    destinations = [Q("q0"), Q("q1"), Q("q2")]
    bound: set[tuple[int, int]] = set()
    for step in steps:
        if step[0] == "route":
            key = step[1]
            expected = {
                destinations[d]
                for p, d in bound
                if reference_match(split_words(patterns[p]), split_words(key))
            }
            assert set(x.route(msg(key))) == expected
        elif step[0] == "bind":
            x.bind(destinations[step[2]], patterns[step[1]], {})
            bound.add((step[1], step[2]))
        else:
            assert x.unbind(destinations[step[2]], patterns[step[1]], {}) == ((step[1], step[2]) in bound)
            bound.discard((step[1], step[2]))


# --- headers --------------------------------------------------------------------------------------


def headers_exchange(arguments: dict[str, Any]) -> tuple[HeadersExchange, Q]:
    x = HeadersExchange("h")
    q = Q("q")
    x.bind(q, "", arguments)
    return x, q


@pytest.mark.parametrize(
    ("arguments", "headers", "matches"),
    [
        ({"a": 1, "b": "x"}, {"a": 1, "b": "x", "c": 3}, True),  # default is all
        ({"a": 1, "b": "x"}, {"a": 1}, False),
        ({"x-match": "all", "a": 1, "b": "x"}, {"a": 1, "b": "y"}, False),
        ({"x-match": "any", "a": 1, "b": "x"}, {"a": 2, "b": "x"}, True),
        ({"x-match": "any", "a": 1, "b": "x"}, {"a": 2, "b": "y"}, False),
        ({"x-match": "any", "a": 1}, {}, False),
        ({"x-match": "all"}, {}, True),  # nothing to compare: all matches everything
        ({}, {"a": 1}, True),
        ({"x-match": "any"}, {"a": 1}, False),  # ... and any matches nothing
        # "x-" arguments are ignored unless the mode says -with-x
        ({"x-match": "all", "x-tenant": "t1", "a": 1}, {"a": 1}, True),
        ({"x-match": "any", "x-tenant": "t1"}, {"x-tenant": "t1"}, False),
        ({"x-match": "all-with-x", "x-tenant": "t1", "a": 1}, {"a": 1}, False),
        ({"x-match": "all-with-x", "x-tenant": "t1", "a": 1}, {"a": 1, "x-tenant": "t1"}, True),
        ({"x-match": "any-with-x", "x-tenant": "t1", "a": 1}, {"x-tenant": "t1"}, True),
        ({"x-match": "any-with-x", "x-tenant": "t1", "a": 1}, {"x-tenant": "t2", "a": 2}, False),
        ({"x-match": "all-with-x"}, {}, True),
        # void binding values match on presence only
        ({"a": None}, {"a": "anything"}, True),
        ({"a": None}, {"a": None}, True),
        ({"a": None}, {"b": 1}, False),
        ({"x-match": "any", "a": None, "b": 1}, {"a": 0}, True),
        ({"a": "x"}, {"a": None}, False),
        # values compare exactly, as Erlang's =:= does
        ({"a": 1}, {"a": True}, False),
        ({"a": True}, {"a": 1}, False),
        ({"a": 1}, {"a": 1.0}, False),
        ({"a": 1}, {"a": "1"}, False),
        ({"a": 300}, {"a": 300}, True),
        ({"a": "x"}, {"a": bytearray(b"x")}, True),
        ({"a": [1, "x"]}, {"a": [1, "x"]}, True),
        ({"a": [1, "x"]}, {"a": [1, "y"]}, False),
        ({"a": {"k": 1, "l": 2}}, {"a": {"k": 1, "l": 2}}, True),
        ({"a": {"k": 1, "l": 2}}, {"a": {"k": 1, "l": 3}}, False),
    ],
)
def test_headers_rules(arguments: dict[str, Any], headers: dict[str, Any], matches: bool) -> None:
    x, q = headers_exchange(arguments)
    assert routed(x, "ignored", headers=headers) == ([q] if matches else [])


def test_same_value_compares_tables_in_field_order() -> None:
    # pamqp sorts table fields when encoding, so this needs values as another client may send them.
    assert same_value({"k": 1, "l": 2}, {"k": 1, "l": 2})
    assert not same_value({"k": 1, "l": 2}, {"l": 2, "k": 1})
    assert not same_value([1], [1.0])
    assert same_value(b"\xff", bytearray(b"\xff"))


def test_headers_message_without_headers() -> None:
    x, q = headers_exchange({"a": 1})
    assert routed(x, "k") == []
    x.bind(q, "", {"x-match": "all"})
    assert routed(x, "k") == [q]


def test_headers_destination_matched_by_two_bindings_appears_once() -> None:
    x, q = headers_exchange({"a": 1})
    x.bind(q, "", {"b": 2})
    r = Q("r")
    x.bind(r, "", {"x-match": "any", "b": 2})
    assert routed(x, headers={"a": 1, "b": 2}) == [q, r]
    x.unbind(q, "", {"a": 1})
    assert routed(x, headers={"a": 1}) == []
    assert routed(x, headers={"b": 2}) == [q, r]


@pytest.mark.parametrize(
    ("x_match", "text"),
    [
        ("foo", 'Invalid x-match field value <<"foo">>; expected all, any, all-with-x, or any-with-x'),
        ("ALL", 'Invalid x-match field value <<"ALL">>; expected all, any, all-with-x, or any-with-x'),
        ("", "Invalid x-match field value <<>>; expected all, any, all-with-x, or any-with-x"),
        (1, "Invalid x-match field type signedint (value 1); expected longstr"),
        (True, "Invalid x-match field type bool (value true); expected longstr"),
    ],
)
def test_headers_invalid_x_match(x_match: Any, text: str) -> None:
    x = HeadersExchange("h")
    assert rejects(x, "", {"x-match": x_match}).text == text
    assert not x.has_bindings()


# --- x-consistent-hash ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "text"),
    [
        ("abc", 'The binding key must be an integer: <<"abc">>'),
        ("", "The binding key must be an integer: <<>>"),
        (" 5", 'The binding key must be an integer: <<" 5">>'),
        ("1_0", 'The binding key must be an integer: <<"1_0">>'),
        ("1.5", 'The binding key must be an integer: <<"1.5">>'),
        ("\uff15", 'The binding key must be an integer: <<"\uff15"/utf8>>'),  # fullwidth digit
        ("0", "The binding key must be greater than 0"),
        ("-3", "The binding key must be greater than 0"),
        ("10001", "The binding key must not exceed 10000"),
        ("99999999999999999999", "The binding key must not exceed 10000"),
    ],
)
def test_consistent_hash_binding_key_validation(key: str, text: str) -> None:
    x = ConsistentHashExchange("c")
    assert rejects(x, key).text == text


def test_consistent_hash_accepts_weights_erlang_parses() -> None:
    x = ConsistentHashExchange("c")
    a, b, c = Q("a"), Q("b"), Q("c")
    x.bind(a, "1", {})
    x.bind(b, "+2", {})
    x.bind(c, "0003", {})
    assert x.ring == (a, b, b, c, c, c)
    x.bind(Q("d"), "10000", {})
    assert len(x.ring) == 10006


@pytest.mark.parametrize(
    ("arguments", "text"),
    [
        (
            {"hash-header": "h", "hash-property": "message_id"},
            "hash-header and hash-property are mutually exclusive",
        ),
        (
            {"hash-header": "h", "hash-property": "bogus"},
            "hash-header and hash-property are mutually exclusive",
        ),
        ({"hash-property": "app_id"}, "Unsupported property: app_id"),
        ({"hash-property": "routing_key"}, "Unsupported property: routing_key"),
    ],
)
def test_consistent_hash_argument_validation(arguments: dict[str, Any], text: str) -> None:
    with pytest.raises(ChannelError) as info:
        ConsistentHashExchange.validate_arguments(arguments)
    assert (info.value.code, info.value.text) == (PRECONDITION_FAILED, text)


def test_consistent_hash_non_string_setting_is_a_bad_argument() -> None:
    # RabbitMQ crashes here (541 on the connection); Leveret refuses the declare with 406 instead.
    for name in ("hash-header", "hash-property"):
        with pytest.raises(ChannelError) as info:
            ConsistentHashExchange.validate_arguments({name: 5})
        assert (info.value.code, info.value.text) == (PRECONDITION_FAILED, f"{name} must be a string, got 5")


@pytest.mark.parametrize(
    "arguments",
    [{}, {"hash-header": "h"}, {"hash-property": "message_id"}, {"hash-property": "correlation_id"},
     {"hash-property": "timestamp"}, {"other": 1}],
)  # fmt: skip
def test_consistent_hash_valid_arguments(arguments: dict[str, Any]) -> None:
    ConsistentHashExchange.validate_arguments(arguments)


def test_jump_hash_matches_published_vectors() -> None:
    # Values from other implementations of Lamping & Veach's algorithm (ClickHouse's tests and others).
    cases = [
        (1, 1, 0), (42, 57, 43), (256, 1024, 520), (3735883980, 1, 0), (3735883980, 666, 361),
        (16045690984833335023, 255, 237), (10863919174838991, 11, 6), (2016238256797177309, 11, 3),
    ]  # fmt: skip
    assert [jump_hash(key, buckets) for key, buckets, _ in cases] == [b for _, _, b in cases]


def test_stable_hash_is_pinned() -> None:
    # Placement must not change between releases: a changed hash moves every key after an upgrade.
    assert stable_hash("order-1") == 2709196713320186429
    assert stable_hash(b"order-1") == stable_hash("order-1")
    assert stable_hash(5) != stable_hash("5")
    assert stable_hash([]) != stable_hash("")
    assert stable_hash(["a", "b"]) == stable_hash("a")


def ring_exchange(
    weights: list[int], arguments: dict[str, Any] | None = None
) -> tuple[ConsistentHashExchange, list[Q]]:
    x = ConsistentHashExchange("c", arguments=arguments)
    destinations = [Q(f"q{i}") for i in range(len(weights))]
    for destination, weight in zip(destinations, weights, strict=True):
        x.bind(destination, str(weight), {})
    return x, destinations


KEYS = [f"key-{i}" for i in range(10_000)]


def placement(x: ConsistentHashExchange, keys: list[str] = KEYS) -> dict[str, Q]:
    result = {}
    for key in keys:
        (destination,) = x.route(msg(key))
        result[key] = destination
    return result


def test_consistent_hash_without_bindings_is_unroutable() -> None:
    x = ConsistentHashExchange("c")
    assert routed(x, "k") == []
    q = Q("q")
    x.bind(q, "1", {})
    x.unbind(q, "1", {})
    assert routed(x, "k") == []


def test_consistent_hash_spreads_keys_by_weight() -> None:
    x, destinations = ring_exchange([1, 2, 3])
    counts = Counter(placement(x).values())
    for destination, weight in zip(destinations, [1, 2, 3], strict=True):
        share = counts[destination] / len(KEYS)
        assert share == pytest.approx(weight / 6, rel=0.05)


def test_consistent_hash_adding_a_destination_moves_keys_only_to_it() -> None:
    x, _ = ring_exchange([1, 2, 3])
    before = placement(x)
    new = Q("new")
    x.bind(new, "2", {})
    after = placement(x)
    moved = [key for key in KEYS if after[key] is not before[key]]
    assert moved and all(after[key] is new for key in moved)
    assert len(moved) / len(KEYS) == pytest.approx(2 / 8, rel=0.1)


def test_consistent_hash_rebinding_in_the_same_order_restores_placement() -> None:
    x, destinations = ring_exchange([3, 1, 2])
    before = placement(x)
    for destination, weight in zip(destinations, [3, 1, 2], strict=True):
        x.unbind(destination, str(weight), {})
    assert routed(x, "k") == []
    for destination, weight in zip(destinations, [3, 1, 2], strict=True):
        x.bind(destination, str(weight), {})
    assert placement(x) == before


def test_consistent_hash_second_binding_does_not_change_the_ring() -> None:
    x, (a, b) = ring_exchange([1, 2])
    ring = x.ring
    x.bind(a, "5", {})
    assert x.ring == ring
    x.unbind(a, "5", {})  # not the binding that placed a
    assert x.ring == ring
    assert x.unbind(b, "2", {})
    assert x.ring == (a,)


def test_consistent_hash_unbinding_removes_only_that_destinations_buckets() -> None:
    x, (a, b, c) = ring_exchange([1, 2, 3])
    x.unbind(b, "2", {})
    assert x.ring == (a, c, c, c)
    x.unbind_destination(c)
    assert x.ring == (a,)


def test_consistent_hash_ring_follows_the_remaining_bindings_in_order() -> None:
    # The placing binding goes while another binding of the same queue remains: the ring becomes what
    # a restart would rebuild from the remaining bindings, so restarts never move keys.
    x, (a, b) = ring_exchange([1, 2])
    x.bind(a, "3", {})
    x.unbind(a, "1", {})
    fresh = ConsistentHashExchange("c")
    for binding in x.bindings:
        fresh.bind(binding.destination, binding.routing_key, binding.arguments)
    assert x.ring == fresh.ring == (b, b, a, a, a)


def test_consistent_hash_one_destination_per_message() -> None:
    x, _ = ring_exchange([1, 1, 1, 1])
    assert all(len(x.route(msg(key))) == 1 for key in KEYS[:500])


def test_consistent_hash_on_header() -> None:
    x, destinations = ring_exchange([1, 1, 1, 1, 1], {"hash-header": "user"})
    users = [f"user-{i}" for i in range(50)]
    for user in users:
        targets = {x.route(msg(f"rk-{i}", headers={"user": user}))[0] for i in range(5)}
        assert len(targets) == 1
    assert len({x.route(msg("rk", headers={"user": user}))[0] for user in users}) == len(destinations)
    # Messages without the header still route, all to one place.
    missing = {
        x.route(msg(f"rk-{i}", **extra))[0] for i in range(20) for extra in ({}, {"headers": {"o": 1}})
    }
    assert len(missing) == 1


@pytest.mark.parametrize("prop", ["message_id", "correlation_id"])
def test_consistent_hash_on_string_property(prop: str) -> None:
    by_key, _ = ring_exchange([1, 2, 3, 4])
    by_prop = ConsistentHashExchange("c", arguments={"hash-property": prop})
    for binding in by_key.bindings:
        by_prop.bind(binding.destination, binding.routing_key, {})
    for i in range(200):
        # The property value hashes exactly as the same text in a routing key would.
        assert by_prop.route(msg("ignored", **{prop: f"id-{i}"})) == by_key.route(msg(f"id-{i}"))
    assert len({by_prop.route(msg(f"rk-{i}"))[0] for i in range(20)}) == 1


def test_consistent_hash_on_timestamp_hashes_its_seconds() -> None:
    by_key, _ = ring_exchange([1, 2, 3, 4])
    by_time = ConsistentHashExchange("c", arguments={"hash-property": "timestamp"})
    for binding in by_key.bindings:
        by_time.bind(binding.destination, binding.routing_key, {})
    for seconds in range(1_700_000_000, 1_700_000_200):
        stamp = datetime.fromtimestamp(seconds, tz=UTC)
        assert by_time.route(msg("ignored", timestamp=stamp)) == by_key.route(msg(str(seconds)))
    assert len({by_time.route(msg(f"rk-{i}"))[0] for i in range(20)}) == 1


@given(st.lists(st.integers(1, 20), min_size=1, max_size=6), st.integers(1, 20))
@settings(max_examples=30, deadline=None)
def test_consistent_hash_growth_moves_keys_only_to_the_newcomer(weights: list[int], extra: int) -> None:
    x, _ = ring_exchange(weights)
    keys = KEYS[:500]
    before = placement(x, keys)
    new = Q("new")
    x.bind(new, str(extra), {})
    after = placement(x, keys)
    assert all(after[key] is before[key] or after[key] is new for key in keys)


PLACEMENT_SCRIPT = textwrap.dedent(
    """
    import json
    from leveret.amqp.properties import properties_from_dict
    from leveret.broker.exchanges.consistent_hash import ConsistentHashExchange
    from leveret.broker.message import Message

    x = ConsistentHashExchange("c")
    names = {}
    for i, weight in enumerate([3, 1, 2, 5]):
        destination = object()
        names[destination] = f"q{i}"
        x.bind(destination, str(weight), {})
    raw = properties_from_dict({})
    keys = [f"key-{i}" for i in range(2000)]
    print(json.dumps({key: names[x.route(Message("c", key, raw, b""))[0]] for key in keys}))
    """
)


@pytest.mark.parametrize("seed", ["1", "4242"])
def test_consistent_hash_placement_is_the_same_in_a_fresh_process(seed: str) -> None:
    x = ConsistentHashExchange("c")
    destinations = [Q(f"q{i}") for i in range(4)]
    for destination, weight in zip(destinations, [3, 1, 2, 5], strict=True):
        x.bind(destination, str(weight), {})
    here = {key: destination.name for key, destination in placement(x, KEYS[:2000]).items()}
    env = {**os.environ, "PYTHONHASHSEED": seed}
    out = subprocess.run(
        [sys.executable, "-c", PLACEMENT_SCRIPT], env=env, capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout) == here


# --- registry and error rendering -----------------------------------------------------------------


def test_registry_knows_the_five_types() -> None:
    assert set(EXCHANGE_TYPES) == {"direct", "fanout", "topic", "headers", "x-consistent-hash"}
    for kind, cls in EXCHANGE_TYPES.items():
        assert exchange_class(kind) is cls
        assert cls.kind == kind
        assert cls("x").route(msg("k")) == ()


@pytest.mark.parametrize(
    ("kind", "text"),
    [
        ("x-delayed-message", "unknown exchange type 'x-delayed-message'"),  # plugin not enabled
        ("Direct", "unknown exchange type 'Direct'"),
        ("bogus", "unknown exchange type 'bogus'"),
        # Names that are Erlang atoms in the node read "invalid" in RabbitMQ.
        ("foo", "invalid exchange type 'foo'"),
        ("", "invalid exchange type ''"),
    ],
)
def test_registry_unknown_type_closes_the_connection(kind: str, text: str) -> None:
    with pytest.raises(ConnectionLevelError) as info:
        exchange_class(kind)
    assert info.value.code == COMMAND_INVALID
    assert info.value.reply_text == f"COMMAND_INVALID - {text}"


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("abc", '<<"abc">>'),
        ('a"b\\c', '<<"a\\"b\\\\c">>'),
        ("a\nb\tc", '<<"a\\nb\\tc">>'),
        ("héllo", '<<"héllo"/utf8>>'),
        ("日本", '<<"日本"/utf8>>'),
        (b"\x00\x01\xff", "<<0,1,255>>"),
        (b"\xe9t\xe9", '<<"été">>'),  # not UTF-8 but printable Latin-1
        (b"", "<<>>"),
        (None, "undefined"),
        (False, "false"),
        (-7, "-7"),
    ],
)
def test_format_term_like_erlang(value: Any, text: str) -> None:
    assert format_term(value) == text
