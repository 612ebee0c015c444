"""Per-field rules beyond the type, attached to schema fields as `metadata={"check": ...}`."""

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .passwords import ALGORITHMS, is_password_hash
from .sizes import parse_size


@dataclass(frozen=True, slots=True)
class Check:
    """`expected` describes the valid values; it is the error text for wrong types and failed tests alike."""

    expected: str
    test: Callable[[Any], bool]


def int_range(low: int, high: int | None = None) -> Check:
    if high is None:
        return Check(f"an integer >= {low}", lambda v: v >= low)
    return Check(f"an integer in {low}..{high}", lambda v: low <= v <= high)


def positive_number() -> Check:
    return Check("a number > 0", lambda v: v > 0)


def one_of(*choices: str) -> Check:
    return Check("one of " + ", ".join(choices), lambda v: v in choices)


def non_empty() -> Check:
    return Check("a non-empty string", lambda v: v != "")


def hosts() -> Check:
    """A listener's address: one host, or a non-empty list of them."""

    def test(value: str | tuple[str, ...]) -> bool:
        values = (value,) if isinstance(value, str) else value
        return bool(values) and all(values)

    return Check("a host such as '127.0.0.1', '::1', '::' or '0.0.0.0', or a non-empty list of them", test)


MECHANISMS = ("PLAIN", "AMQPLAIN", "EXTERNAL")


def mechanisms() -> Check:
    def test(value: tuple[str, ...]) -> bool:
        return bool(value) and all(name in MECHANISMS for name in value) and len(set(value)) == len(value)

    return Check("a non-empty list of distinct SASL mechanisms among " + ", ".join(MECHANISMS), test)


def _compiles(pattern: str) -> bool:
    try:
        re.compile(pattern)
    # Huge repeat counts overflow and deep nesting exhausts the parser's recursion; both are just invalid.
    except (re.error, OverflowError, RecursionError):
        return False
    return True


def regex() -> Check:
    return Check("a valid regular expression", _compiles)


def _is_size(value: str | int) -> bool:
    try:
        parse_size(value)
    except ValueError:
        return False
    return True


def size() -> Check:
    return Check("a size in bytes such as 1048576, '50MB' or '1GiB'", _is_size)


def fraction_or_size() -> Check:
    def test(value: float | str) -> bool:
        return 0 < value <= 1 if isinstance(value, float) else _is_size(value) and parse_size(value) > 0

    return Check("a fraction in (0, 1] or a size such as '2GB'", test)


def password_hash() -> Check:
    return Check(
        "a RabbitMQ password hash (base64 of a 4-byte salt and the digest)",
        lambda v: isinstance(v, str) and any(is_password_hash(v, a) for a in ALGORITHMS),
    )
