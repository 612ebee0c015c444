"""Queue arguments (x-...): which are known, and RabbitMQ's checks of their values at declare."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from leveret.amqp.constants import PRECONDITION_FAILED
from leveret.amqp.errors import ChannelError

OVERFLOW_MODES = ("drop-head", "reject-publish", "reject-publish-dlx")
QUEUE_TYPES = ("classic", "quorum", "stream")


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


def _expected(kind: str, value: Any) -> str:
    return f'"expected {kind}, got {amqp_type(value)}"'


def _non_negative_int(value: Any) -> str | None:
    if not _is_int(value):
        return _expected("integer", value)
    return None if value >= 0 else f"{{value_negative,{value}}}"


def _positive_int(value: Any) -> str | None:
    if not _is_int(value):
        return _expected("integer", value)
    return None if value > 0 else f"{{value_zero_or_less,{value}}}"


def _string(value: Any) -> str | None:
    return None if isinstance(value, (str, bytes)) else _expected("string", value)


def _bool(value: Any) -> str | None:
    return None if isinstance(value, bool) else _expected("boolean", value)


def _one_of(choices: tuple[str, ...], problem: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        return None if value in choices else problem

    return check


def _priority(value: Any) -> str | None:
    problem = _positive_int(value)
    if problem:
        return problem
    return None if value <= 255 else f"{{value_too_large,{value}}}"


CHECKS: dict[str, Callable[[Any], str | None]] = {
    "x-message-ttl": _non_negative_int,
    "x-expires": _positive_int,
    "x-max-length": _non_negative_int,
    "x-max-length-bytes": _non_negative_int,
    "x-overflow": _one_of(OVERFLOW_MODES, "invalid_overflow"),
    "x-dead-letter-exchange": _string,
    "x-dead-letter-routing-key": _string,
    "x-max-priority": _priority,
    "x-queue-type": _one_of(QUEUE_TYPES, "invalid_queue_type"),
    "x-single-active-consumer": _bool,
    "x-delivery-limit": _non_negative_int,
    "x-queue-mode": _one_of(("default", "lazy"), "invalid_queue_mode"),
    "x-queue-master-locator": _string,
    "x-queue-leader-locator": _string,
}


# Only these take part in redeclare equivalence; RabbitMQ ignores differences in any other argument.
EQUIVALENCE_KEYS = frozenset(CHECKS) - {"x-queue-master-locator", "x-queue-leader-locator", "x-queue-mode"}


def validate_queue_arguments(queue: str, vhost: str, arguments: dict[str, Any]) -> None:
    """406 PRECONDITION_FAILED for a known argument with a bad value; unknown ones are kept, as in RabbitMQ."""
    for key, value in arguments.items():
        check = CHECKS.get(key)
        problem = check(value) if check else None
        if problem:
            raise ChannelError(
                PRECONDITION_FAILED, f"invalid arg '{key}' for queue '{queue}' in vhost '{vhost}': {problem}"
            )
    if "x-dead-letter-routing-key" in arguments and "x-dead-letter-exchange" not in arguments:
        raise ChannelError(
            PRECONDITION_FAILED,
            f"invalid arg 'x-dead-letter-routing-key' for queue '{queue}' in vhost '{vhost}': "
            "x-dead-letter-exchange is required",
        )
