"""etcd v3 requests and answers as data, and their form on etcd's JSON gateway (`/v3/...`).

The gateway speaks gRPC-JSON: keys and values are base64, 64-bit numbers are strings, and fields equal to
their zero value are left out of answers (a missing `count` is 0, a missing `kvs` is empty).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


def prefix_end(prefix: bytes) -> bytes:
    """The range_end that makes a range cover every key starting with `prefix` (etcd's GetPrefixRangeEnd)."""
    end = bytearray(prefix)
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"  # every key


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int = 1
    lease: int = 0

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> KeyValue:
        return cls(
            key=unb64(data.get("key")),
            value=unb64(data.get("value")),
            create_revision=int(data.get("create_revision", 0)),
            mod_revision=int(data.get("mod_revision", 0)),
            version=int(data.get("version", 0)),
            lease=int(data.get("lease", 0)),
        )


# ---- operations (a txn's branches, or alone) -------------------------------------------------


@dataclass(frozen=True, slots=True)
class Get:
    key: bytes
    range_end: bytes | None = None  # None: just `key`

    @classmethod
    def prefix(cls, prefix: bytes) -> Get:
        return cls(prefix, prefix_end(prefix))

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"key": b64(self.key)}
        if self.range_end is not None:
            body["range_end"] = b64(self.range_end)
        return body


@dataclass(frozen=True, slots=True)
class Put:
    key: bytes
    value: bytes
    lease: int = 0

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"key": b64(self.key), "value": b64(self.value)}
        if self.lease:
            body["lease"] = str(self.lease)
        return body


@dataclass(frozen=True, slots=True)
class Delete:
    key: bytes
    range_end: bytes | None = None

    @classmethod
    def prefix(cls, prefix: bytes) -> Delete:
        return cls(prefix, prefix_end(prefix))

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"key": b64(self.key)}
        if self.range_end is not None:
            body["range_end"] = b64(self.range_end)
        return body


Op = Get | Put | Delete
_OP_NAMES = {
    Get: ("request_range", "response_range"),
    Put: ("request_put", "response_put"),
    Delete: ("request_delete_range", "response_delete_range"),
}


@dataclass(frozen=True, slots=True)
class Compare:
    """One guard of a txn: `target` of `key` compared with `value` (etcd's Compare)."""

    key: bytes
    target: str  # CREATE, MOD, VERSION, VALUE, LEASE
    result: str  # EQUAL, NOT_EQUAL, GREATER, LESS
    value: int | bytes

    @classmethod
    def absent(cls, key: bytes) -> Compare:
        return cls(key, "CREATE", "EQUAL", 0)

    @classmethod
    def exists(cls, key: bytes) -> Compare:
        return cls(key, "CREATE", "GREATER", 0)

    @classmethod
    def unchanged_since(cls, key: bytes, mod_revision: int) -> Compare:
        return cls(key, "MOD", "EQUAL", mod_revision)

    @classmethod
    def holds(cls, key: bytes, value: bytes) -> Compare:
        return cls(key, "VALUE", "EQUAL", value)

    def to_json(self) -> dict[str, Any]:
        field = {
            "CREATE": "create_revision",
            "MOD": "mod_revision",
            "VERSION": "version",
            "VALUE": "value",
            "LEASE": "lease",
        }[self.target]
        value = b64(self.value) if isinstance(self.value, bytes) else str(self.value)
        return {"key": b64(self.key), "target": self.target, "result": self.result, field: value}


@dataclass(frozen=True, slots=True)
class Txn:
    compare: tuple[Compare, ...]
    success: tuple[Op, ...]
    failure: tuple[Op, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "compare": [c.to_json() for c in self.compare],
            "success": [_op_json(op) for op in self.success],
            "failure": [_op_json(op) for op in self.failure],
        }


def _op_json(op: Op) -> dict[str, Any]:
    return {_OP_NAMES[type(op)][0]: op.to_json()}


# ---- answers ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RangeResult:
    kvs: list[KeyValue]
    revision: int  # the store's revision the answer was read at


# One answer per operation of the branch taken: a Get's KeyValues, a Delete's count, None for a Put.
OpResult = list[KeyValue] | int | None


@dataclass(frozen=True, slots=True)
class TxnResult:
    succeeded: bool
    responses: list[OpResult]
    revision: int


def header_revision(body: dict[str, Any]) -> int:
    return int(body.get("header", {}).get("revision", 0))


def range_result(body: dict[str, Any]) -> RangeResult:
    return RangeResult([KeyValue.from_json(kv) for kv in body.get("kvs", [])], header_revision(body))


def txn_result(txn: Txn, body: dict[str, Any]) -> TxnResult:
    succeeded = bool(body.get("succeeded", False))
    ops = txn.success if succeeded else txn.failure
    answers = body.get("responses", [])
    results: list[OpResult] = []
    for op, answer in zip(ops, answers, strict=False):
        inner = answer.get(_OP_NAMES[type(op)][1], {})
        if isinstance(op, Get):
            results.append([KeyValue.from_json(kv) for kv in inner.get("kvs", [])])
        elif isinstance(op, Delete):
            results.append(int(inner.get("deleted", 0)))
        else:
            results.append(None)
    return TxnResult(succeeded, results, header_revision(body))


# ---- watch events ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WatchEvent:
    kind: str  # PUT or DELETE
    kv: KeyValue  # for a DELETE: the key and the revision of the deletion (mod_revision)


@dataclass(frozen=True, slots=True)
class WatchEvents:
    """Changes under the watched range, in revision order."""

    events: list[WatchEvent]
    revision: int  # every change up to this revision has been seen


@dataclass(frozen=True, slots=True)
class WatchSnapshot:
    """The watch could not resume (its revision was compacted away): the whole range, as of `revision`.
    Whoever holds a view of the range replaces it with this."""

    kvs: list[KeyValue]
    revision: int


def watch_events(body: dict[str, Any]) -> list[WatchEvent]:
    return [
        WatchEvent(event.get("type", "PUT"), KeyValue.from_json(event.get("kv", {})))
        for event in body.get("events", [])
    ]
