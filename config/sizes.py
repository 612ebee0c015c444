"""Byte sizes as RabbitMQ writes them: 1048576, "50MB" (powers of 10), "1GiB" or "1G" (powers of 2)."""

import re

_SIZE = re.compile(r"\s*(\d+)\s*([a-z]*)\s*", re.IGNORECASE)
_UNITS = {
    "": 1,
    "b": 1,
    "k": 2**10, "kib": 2**10, "kb": 10**3,
    "m": 2**20, "mib": 2**20, "mb": 10**6,
    "g": 2**30, "gib": 2**30, "gb": 10**9,
    "t": 2**40, "tib": 2**40, "tb": 10**12,
}  # fmt: skip


def parse_size(value: str | int) -> int:
    """Bytes in `value`; ValueError if it is not a non-negative integer or an integer with a unit."""
    # bool is an int subclass, but `true` is never a size someone meant.
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"negative size: {value}")
        return value
    if not isinstance(value, str):
        raise ValueError(f"not a size: {value!r}")
    match = _SIZE.fullmatch(value)
    if match is None or match[2].lower() not in _UNITS:
        raise ValueError(f"not a size: {value!r}")
    return int(match[1]) * _UNITS[match[2].lower()]
