"""Build schema dataclasses from plain data, driven only by their fields and type hints.

Supported hints: str, int, float, bool, nested dataclasses, `tuple[X, ...]` and unions (`X | None`,
several scalars such as `float | str`, or scalars and one tuple such as `str | tuple[str, ...]`). Every
problem is appended to `errors` as "dotted.path: message" and the walk carries on, so one pass reports
them all.
"""

import dataclasses
import difflib
import math
import types
from collections.abc import Mapping
from typing import Any, TypeVar, Union, cast, get_args, get_origin, get_type_hints

from .checks import Check

T = TypeVar("T")

# Returned in place of a value that failed; its errors are already recorded.
_INVALID: Any = object()

_SCALAR_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


def build(cls: type[T], data: object, errors: list[str]) -> T | None:
    """An instance of the dataclass `cls` from `data`, or None once errors have been appended."""
    value = _convert(cls, data, "", errors, None)
    return None if value is _INVALID else cast(T, value)


def _at(path: str) -> str:
    return path or "(top level)"


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _describe_value(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _describe_type(tp: Any) -> str:
    # A union's null member is not named here: _convert appends "or null" itself.
    if get_origin(tp) in (Union, types.UnionType):
        return " or ".join(_describe_type(arg) for arg in get_args(tp) if arg is not type(None))
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    if get_origin(tp) is tuple:
        return "a list"
    return _SCALAR_NAMES[tp]


def _scalar(tp: Any, value: object) -> object:
    """`value` as the scalar type `tp`, or _INVALID. bool is never an int; an int is a fine float."""
    if tp not in _SCALAR_NAMES:
        raise TypeError(f"config schema uses an unsupported type: {tp!r}")
    if isinstance(value, bool):
        return value if tp is bool else _INVALID
    if tp is float and isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:
            return _INVALID
        return number if math.isfinite(number) else _INVALID
    return value if isinstance(value, tp) else _INVALID


def _convert(
    tp: Any, value: object, path: str, errors: list[str], check: Check | None, nullable: bool = False
) -> object:
    """`value` as type `tp`, passing `check` if given; None is never checked, as it means "unset"."""
    args, origin = get_args(tp), get_origin(tp)
    if origin in (Union, types.UnionType):
        nullable = nullable or type(None) in args
        if value is None and nullable:
            return None
        members = [arg for arg in args if arg is not type(None)]
        if len(members) == 1:
            return _convert(members[0], value, path, errors, check, nullable)
        # One list member at most (`str | tuple[str, ...]`): a list is that, anything else a scalar.
        sequence = next((m for m in members if get_origin(m) is tuple), None)
        if sequence is not None and isinstance(value, list | tuple):
            converted = _convert(sequence, value, path, errors, None)
            if converted is _INVALID:
                return _INVALID  # each bad item has reported itself
        else:
            scalars = [m for m in members if m is not sequence]
            converted = next((c for c in (_scalar(m, value) for m in scalars) if c is not _INVALID), _INVALID)
    elif dataclasses.is_dataclass(tp) and isinstance(value, Mapping):
        return _convert_dataclass(tp, value, path, errors)
    elif origin is tuple and isinstance(value, list | tuple):
        items = [_convert(args[0], item, f"{path}[{i}]", errors, None) for i, item in enumerate(value)]
        # Each bad item has reported itself.
        if any(item is _INVALID for item in items):
            return _INVALID
        converted = tuple(items)
    elif dataclasses.is_dataclass(tp) or origin is tuple:
        converted = _INVALID
    else:
        converted = _scalar(tp, value)
    if converted is _INVALID or (check is not None and not check.test(converted)):
        expected = check.expected if check is not None else _describe_type(tp)
        or_null = " or null" if nullable else ""
        errors.append(f"{_at(path)}: expected {expected}{or_null}, got {_describe_value(value)}")
        return _INVALID
    return converted


def _convert_dataclass(cls: Any, data: Mapping[Any, object], path: str, errors: list[str]) -> object:
    hints = get_type_hints(cls)
    known: list[str] = []
    values: dict[str, object] = {}
    valid = True
    for field in dataclasses.fields(cls):
        known.append(field.name)
        field_path = _join(path, field.name)
        # ("password", hash_password): the field may instead be given under that key, then converted.
        alias: tuple[str, Any] | None = field.metadata.get("alias")
        if alias is not None:
            known.append(alias[0])
        if alias is not None and alias[0] in data:
            if field.name in data:
                errors.append(f"{_at(path)}: give {field.name} or {alias[0]}, not both")
                value = _INVALID
            else:
                value = _convert(hints[field.name], data[alias[0]], _join(path, alias[0]), errors, None)
                value = _INVALID if value is _INVALID else alias[1](value)
        elif field.name in data:
            value = _convert(
                hints[field.name], data[field.name], field_path, errors, field.metadata.get("check")
            )
        elif field.default is not dataclasses.MISSING:
            value = field.default
        elif field.default_factory is not dataclasses.MISSING:
            value = field.default_factory()
        else:
            either = f" (give {field.name} or {alias[0]})" if alias is not None else ""
            errors.append(f"{field_path}: missing{either}")
            value = _INVALID
        if value is _INVALID:
            valid = False
        else:
            values[field.name] = value
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            errors.append(f"{_join(path, str(key))}: unknown key{hint}")
            valid = False
    # Rules spanning several fields live on the class itself; see Config.cross_check.
    cross_check = getattr(cls, "cross_check", None)
    if cross_check is not None:
        for problem_path, message in cross_check(values):
            errors.append(f"{_join(path, problem_path)}: {message}")
            valid = False
    return cls(**values) if valid else _INVALID
