"""rabbitmqctl's two output formats for lists: `table` (tab-separated, a header row) and `json`.

Values are rendered as rabbitmqctl renders them: booleans as true/false, a missing value as nothing, a list
of names as [a, b], an AMQP table (arguments, client properties) as Erlang's [{"key",value}] in a table and
as [[key, type, value]] in JSON.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, TextIO

Row = dict[str, Any]


def compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def cell(value: Any) -> str:
    """A value as a table cell."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return _erlang(value)
    if isinstance(value, list):
        return "[" + ", ".join(cell(item) for item in value) + "]"
    return str(value)


def _erlang(value: Any) -> str:
    """A value nested in an AMQP table: strings quoted, tables as proplists."""
    if isinstance(value, dict):
        return "[" + ",".join("{" + compact(str(k)) + "," + _erlang(v) + "}" for k, v in value.items()) + "]"
    if isinstance(value, list):
        return "[" + ",".join(_erlang(item) for item in value) + "]"
    if isinstance(value, str):
        return compact(value)
    if value is None:
        return "undefined"
    return cell(value)


def _amqp_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        # JSON has lost the AMQP type; most clients send an int that fits 32 bits as a signed int.
        return "signedint" if -(2**31) <= value < 2**31 else "long"
    if isinstance(value, float):
        return "double"
    if isinstance(value, dict):
        return "table"
    if isinstance(value, list):
        return "array"
    if value is None:
        return "void"
    return "longstr"


def json_value(value: Any) -> Any:
    """A value as rabbitmqctl's JSON formatter writes it: tables as [[key, type, value]]."""
    if isinstance(value, dict):
        return [[str(k), _amqp_type(v), json_value(v)] for k, v in value.items()]
    if isinstance(value, list):
        return [json_value(item) for item in value]
    return value


def write_table(out: TextIO, columns: Sequence[str], rows: Sequence[Row], *, headers: bool = True) -> None:
    # No header over no rows, as rabbitmqctl.
    if rows and headers:
        out.write("\t".join(columns) + "\n")
    for row in rows:
        out.write("\t".join(cell(row[c]) for c in columns) + "\n")


def write_json(out: TextIO, columns: Sequence[str], rows: Sequence[Row]) -> None:
    """One object per line between brackets, leading commas: rabbitmqctl's streaming layout."""
    objects = [compact({c: json_value(row[c]) for c in columns}) for row in rows]
    out.write("[\n" + "".join(f"{',' if i else ''}{o}\n" for i, o in enumerate(objects)) + "]\n")
