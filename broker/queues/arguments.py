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


def _non_negative_int(value: Any) -> str | None:
    if not _is_int(value):
        return f"{{unacceptable_type,{value!r}}}"
    return None if value >= 0 else f"{{value_negative,{value}}}"


def _positive_int(value: Any) -> str | None:
    if not _is_int(value):
        return f"{{unacceptable_type,{value!r}}}"
    return None if value > 0 else f"{{value_zero_or_less,{value}}}"


def _string(value: Any) -> str | None:
    return None if isinstance(value, (str, bytes)) else f"{{unacceptable_type,{value!r}}}"


def _bool(value: Any) -> str | None:
    return None if isinstance(value, bool) else f"{{unacceptable_type,{value!r}}}"


def _one_of(choices: tuple[str, ...]) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        return None if value in choices else f"{{unknown_value,<<\"{value}\">>}}"

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
    "x-overflow": _one_of(OVERFLOW_MODES),
    "x-dead-letter-exchange": _string,
    "x-dead-letter-routing-key": _string,
    "x-max-priority": _priority,
    "x-queue-type": _one_of(QUEUE_TYPES),
    "x-single-active-consumer": _bool,
    "x-delivery-limit": _non_negative_int,
    "x-queue-mode": _one_of(("default", "lazy")),
    "x-queue-master-locator": _string,
    "x-queue-leader-locator": _string,
}


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
