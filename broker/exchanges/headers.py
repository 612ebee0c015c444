"""Headers exchange: a binding's arguments are matched against the message's headers.

`x-match` picks the rule: `all` (the default) or `any` of the binding's other arguments must equal
the message header of the same name; a void (None) argument only asks for the header to be present.
Arguments starting with "x-" take no part, except in the `all-with-x` / `any-with-x` modes (the
`x-match` argument itself never does). An `all` binding with nothing left to compare matches every
message; an `any` binding with nothing left matches none.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any, ClassVar

from leveret.amqp.constants import PRECONDITION_FAILED
from leveret.amqp.errors import ChannelError
from leveret.broker.message import Message

from .base import Binding, Destination, Exchange
from .erlang_terms import field_type, format_term

# x-match value -> (any rather than all, compare "x-" arguments too).
_MODES = {
    "all": (False, False),
    "any": (True, False),
    "all-with-x": (False, True),
    "any-with-x": (True, True),
}


_SCALARS = frozenset({str, int, float, bool})
_ABSENT = object()


def _binary(value: bytes | bytearray) -> str | bytes:
    # On the wire a longstr and a byte array are both Erlang binaries: equal when the bytes are.
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        return bytes(value)


def same_value(a: Any, b: Any) -> bool:
    """Erlang's exact equality (=:=) on decoded field values: 1 is not 1.0 nor True, and tables
    compare in field order."""
    if type(a) is type(b) and type(a) in _SCALARS:  # the usual case, on the routing hot path
        return a == b
    if isinstance(a, (bytes, bytearray)):
        a = _binary(a)
    if isinstance(b, (bytes, bytearray)):
        b = _binary(b)
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(map(same_value, a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same_value(a[k], b[k]) for k in a)
    if isinstance(a, Decimal):
        return a.as_tuple() == b.as_tuple()
    return a == b


class _Spec:
    """One binding's arguments, prepared for matching."""

    __slots__ = ("match_any", "fields")

    def __init__(self, arguments: Mapping[str, Any]) -> None:
        self.match_any, with_x = _MODES[arguments.get("x-match", "all")]  # validated at bind
        self.fields = tuple(
            (key, value)
            for key, value in arguments.items()
            if key != "x-match" and (with_x or not key.startswith("x-"))
        )

    def matches(self, headers: Mapping[str, Any]) -> bool:
        for key, expected in self.fields:
            value = headers.get(key, _ABSENT)
            if value is _ABSENT:
                hit = False
            elif expected is None:
                hit = True
            else:
                hit = same_value(value, expected)
            if hit is self.match_any:
                return hit
        return not self.match_any


class HeadersExchange(Exchange):
    kind: ClassVar[str] = "headers"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._specs: dict[Binding, _Spec] = {}

    def validate_binding(self, routing_key: str, arguments: dict[str, Any]) -> None:
        if "x-match" not in arguments:
            return
        mode = arguments["x-match"]
        if isinstance(mode, (str, bytes)):
            if mode not in _MODES:
                raise ChannelError(
                    PRECONDITION_FAILED,
                    f"Invalid x-match field value {format_term(mode)}; "
                    "expected all, any, all-with-x, or any-with-x",
                )
        else:
            raise ChannelError(
                PRECONDITION_FAILED,
                f"Invalid x-match field type {field_type(mode)} (value {format_term(mode)}); "
                "expected longstr",
            )

    def route(self, message: Message) -> tuple[Destination, ...]:
        if not self._specs:
            return ()
        headers = message.headers
        found: dict[Destination, None] = {}
        for binding, spec in self._specs.items():
            if binding.destination not in found and spec.matches(headers):
                found[binding.destination] = None
        return tuple(found)

    def _added(self, binding: Binding) -> None:
        self._specs[binding] = _Spec(binding.arguments)

    def _removed(self, binding: Binding) -> None:
        del self._specs[binding]
