"""Queue and consumer arguments (x-...): which each queue type takes, and RabbitMQ's checks of their values.

The texts are RabbitMQ 3.10's (rabbit_amqqueue:declare_args/0 and friends): a problem is printed as Erlang
prints the error term, so `{value_negative,-1}`, `invalid_overflow`, or a quoted string.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from leveret.amqp.constants import PRECONDITION_FAILED
from leveret.amqp.errors import ChannelError

OVERFLOW_MODES = ("drop-head", "reject-publish", "reject-publish-dlx")
QUEUE_TYPES = ("classic", "quorum", "stream")
# RabbitMQ refuses TTLs and expiries over ten years (rabbit_misc:check_expiry).
MAX_EXPIRY_MS = 315_360_000_000
MAX_PRIORITY = 255

Check = Callable[[Any, dict[str, Any]], str | None]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def amqp_type(value: object) -> str:
    """The field-table type name RabbitMQ uses in its messages about a value."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "long" if not -(2**31) <= value < 2**31 else "signedint"
    if isinstance(value, float):
        return "double"
    if isinstance(value, (str, bytes)):
        return "longstr"
    if isinstance(value, dict):
        return "table"
    if isinstance(value, list):
        return "array"
    return "void" if value is None else type(value).__name__


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None


def _quoted(text: str) -> str:
    """An Erlang string as `~p` prints it."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _unacceptable(value: Any) -> str:
    return f"{{unacceptable_type,{amqp_type(value)}}}"


def _integer(value: Any, _: dict) -> str | None:
    return None if _is_int(value) else _quoted(f"expected integer, got {amqp_type(value)}")


def _non_negative(value: Any, arguments: dict) -> str | None:
    problem = _integer(value, arguments)
    if problem is None and value < 0:
        return f"{{value_negative,{value}}}"
    return problem


def _expiry(value: int) -> str | None:
    if value < 0:
        return f"{{value_negative,{value}}}"
    return f"{{value_too_large,{value}}}" if value > MAX_EXPIRY_MS else None


def _message_ttl(value: Any, arguments: dict) -> str | None:
    return _integer(value, arguments) or _expiry(value)


def _expires(value: Any, arguments: dict) -> str | None:
    problem = _integer(value, arguments)
    if problem is None and value == 0:
        return "{value_zero,0}"
    return problem or _expiry(value)


def _positive(value: Any, arguments: dict) -> str | None:
    problem = _non_negative(value, arguments)
    return "{value_zero,0}" if problem is None and value == 0 else problem


def _max_priority(value: Any, arguments: dict) -> str | None:
    problem = _non_negative(value, arguments)
    if problem is None and value > MAX_PRIORITY:
        return f"{{max_value_exceeded,{value}}}"
    return problem


def _bool(value: Any, _: dict) -> str | None:
    return None if isinstance(value, bool) else _unacceptable(value)


def _string(value: Any, _: dict) -> str | None:
    return None if _text(value) is not None else _unacceptable(value)


def _dead_letter_routing_key(value: Any, arguments: dict) -> str | None:
    if _text(value) is None:
        return _unacceptable(value)
    return None if "x-dead-letter-exchange" in arguments else "routing_key_but_no_dlx_defined"


def _one_of(choices: tuple[str, ...], problem: Callable[[str], str]) -> Check:
    def check(value: Any, _: dict) -> str | None:
        text = _text(value)
        if text is None:
            return _unacceptable(value)
        return None if text in choices else problem(text)

    return check


def _queue_version(value: Any, arguments: dict) -> str | None:
    problem = _non_negative(value, arguments)
    if problem is None and value not in (1, 2):
        return _quoted(f"unsupported queue version '{value}'")
    return problem


_MAX_AGE = re.compile(r"([0-9]+)([YMDhms])")


def _max_age(value: Any, _: dict) -> str | None:
    text = _text(value)
    if text is None:
        return _unacceptable(value)
    match = _MAX_AGE.fullmatch(text)
    return None if match and int(match[1]) > 0 else "invalid_max_age"


# In RabbitMQ's order (declare_args/0): when several arguments are bad, the first one here is reported.
DECLARE_CHECKS: dict[str, Check] = {
    "x-expires": _expires,
    "x-message-ttl": _message_ttl,
    "x-dead-letter-exchange": _string,
    "x-dead-letter-routing-key": _dead_letter_routing_key,
    "x-dead-letter-strategy": _one_of(("at-most-once", "at-least-once"), lambda _: "invalid_dlx_strategy"),
    "x-max-length": _non_negative,
    "x-max-length-bytes": _non_negative,
    "x-max-in-memory-length": _non_negative,
    "x-max-in-memory-bytes": _non_negative,
    "x-max-priority": _max_priority,
    "x-overflow": _one_of(OVERFLOW_MODES, lambda _: "invalid_overflow"),
    "x-queue-mode": _one_of(("default", "lazy"), lambda mode: _quoted(f"unsupported queue mode '{mode}'")),
    "x-queue-version": _queue_version,
    "x-single-active-consumer": _bool,
    "x-queue-type": _one_of(QUEUE_TYPES, lambda kind: _quoted(f"unsupported queue type '{kind}'")),
    "x-quorum-initial-group-size": _positive,
    "x-max-age": _max_age,
    "x-stream-max-segment-size-bytes": _non_negative,
    "x-initial-cluster-size": _positive,
    "x-queue-leader-locator": _one_of(("client-local", "balanced"), lambda _: "invalid_queue_locator_arg"),
}

# The arguments each queue type takes, in the order of its module's capabilities/0: one meant for another
# type is refused, and these (checked in this order) are the ones a redeclare must repeat.
TYPE_ARGUMENTS: dict[str, tuple[str, ...]] = {
    "classic": (
        "x-expires", "x-message-ttl", "x-dead-letter-exchange", "x-dead-letter-routing-key", "x-max-length",
        "x-max-length-bytes", "x-max-priority", "x-overflow", "x-queue-mode", "x-queue-version",
        "x-single-active-consumer", "x-queue-type", "x-queue-master-locator",
    ),
    "quorum": (
        "x-dead-letter-exchange", "x-dead-letter-routing-key", "x-dead-letter-strategy", "x-expires",
        "x-max-length", "x-max-length-bytes", "x-max-in-memory-length", "x-max-in-memory-bytes", "x-overflow",
        "x-single-active-consumer", "x-queue-type", "x-quorum-initial-group-size", "x-delivery-limit",
        "x-message-ttl", "x-queue-leader-locator",
    ),
    "stream": (
        "x-max-length-bytes", "x-queue-type", "x-max-age", "x-stream-max-segment-size-bytes",
        "x-initial-cluster-size", "x-queue-leader-locator",
    ),
}
_TYPED_ARGUMENTS = frozenset().union(*TYPE_ARGUMENTS.values())


def queue_type(arguments: dict[str, Any]) -> str:
    return _text(arguments.get("x-queue-type")) or "classic"


def validate_queue_arguments(queue: str, vhost: str, arguments: dict[str, Any]) -> None:
    """406 PRECONDITION_FAILED for a bad value or an argument of another queue type; unknown ones are kept."""
    where = f"for queue '{queue}' in vhost '{vhost}'"
    dead_letter_exchange = arguments.get("x-dead-letter-exchange")
    if dead_letter_exchange is not None and _text(dead_letter_exchange) is None:
        # rabbit_channel checks this one first, with a text of its own.
        raise ChannelError(
            PRECONDITION_FAILED,
            f"invalid type '{amqp_type(dead_letter_exchange)}' for arg 'x-dead-letter-exchange' in queue "
            f"'{queue}' in vhost '{vhost}'",
        )
    _check_values(where, arguments, ("x-queue-type",))
    kind = queue_type(arguments)
    allowed = TYPE_ARGUMENTS[kind]
    _check_values(where, arguments, [key for key in DECLARE_CHECKS if key in allowed])
    for key in arguments:
        if key in _TYPED_ARGUMENTS and key not in allowed:
            raise ChannelError(
                PRECONDITION_FAILED, f"invalid arg '{key}' {where} of queue type rabbit_{kind}_queue"
            )


def validate_consumer_arguments(queue: str, vhost: str, arguments: dict[str, Any]) -> None:
    """basic.consume's x-priority must be an integer."""
    priority = arguments.get("x-priority")
    if priority is not None and not _is_int(priority):
        problem = _integer(priority, arguments)
        raise ChannelError(
            PRECONDITION_FAILED, f"invalid arg 'x-priority' for queue '{queue}' in vhost '{vhost}': {problem}"
        )


def _check_values(where: str, arguments: dict[str, Any], keys: Any) -> None:
    for key in keys:
        if key in arguments:
            problem = DECLARE_CHECKS[key](arguments[key], arguments)
            if problem:
                raise ChannelError(PRECONDITION_FAILED, f"invalid arg '{key}' {where}: {problem}")


def validate_queue_properties(
    queue: str, vhost: str, arguments: dict[str, Any], *, durable: bool, exclusive: bool, auto_delete: bool
) -> None:
    """Quorum and stream queues are durable, shared and kept: RabbitMQ refuses a new one declared
    auto-delete, exclusive or non-durable (406, checked in that order, after the arguments and the vhost's
    queue limit). `durable` is the queue's (an exclusive declare is never durable)."""
    if queue_type(arguments) == "classic":
        return
    if auto_delete:
        problem = "auto-delete"
    elif exclusive:
        problem = "exclusive-owner"
    elif not durable:
        problem = "non-durable"
    else:
        return
    raise ChannelError(
        PRECONDITION_FAILED, f"invalid property '{problem}' for queue '{queue}' in vhost '{vhost}'"
    )


def check_server_named_allowed(arguments: dict[str, Any]) -> None:
    """Only classic queues may be server-named (RabbitMQ checks this first, before permissions)."""
    kind = queue_type(arguments)
    if kind != "classic" and kind in QUEUE_TYPES:
        raise ChannelError(
            PRECONDITION_FAILED, f"Cannot declare a server-named queue for type rabbit_{kind}_queue"
        )
