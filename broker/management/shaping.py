"""RabbitMQ's query parameters that shape a GET answer: `columns` (the fields to keep, as
`?columns=name,messages`; a dotted column keeps its top-level field) and `sort` / `sort_reverse` (a list by a
field, dotted for nested ones). rabbitmqadmin's `list` sends them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

SHAPING = ("columns", "sort", "sort_reverse")


def shape(value: Any, query: Mapping[str, str]) -> Any:
    sort = query.get("sort")
    if sort and isinstance(value, list):
        value = sorted(
            value, key=lambda item: _sort_key(_field(item, sort)), reverse=query.get("sort_reverse") == "true"
        )
    columns = [c for c in query.get("columns", "").split(",") if c]
    if columns:
        keep = {column.split(".", 1)[0] for column in columns}
        if isinstance(value, list):
            value = [_kept(item, keep) for item in value]
        else:
            value = _kept(value, keep)
    return value


def _kept(item: Any, keep: set[str]) -> Any:
    return {k: v for k, v in item.items() if k in keep} if isinstance(item, dict) else item


def _field(item: Any, path: str) -> Any:
    for part in path.split("."):
        item = item.get(part) if isinstance(item, dict) else None
    return item


def _sort_key(value: Any) -> tuple[int, Any]:
    """Missing values first, then numbers, then text: a mixed column never fails to compare."""
    if value is None:
        return (0, 0)
    if isinstance(value, bool | int | float):
        return (1, value)
    return (2, str(value))
