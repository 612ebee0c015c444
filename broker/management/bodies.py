"""Request bodies as RabbitMQ's management API reads them: a JSON object (an empty body is {}), fields
that may arrive as JSON values or as strings (rabbitmqadmin sends "true" and "1"), and its error bodies
for what does not parse. Unknown fields are ignored, as RabbitMQ ignores them."""

from __future__ import annotations

import json
import struct
from typing import Any

from pamqp import encode
from pamqp.exceptions import PAMQPException
from starlette.requests import Request

from leveret.broker.management.context import ApiError, bad_request

# RabbitMQ's management.http.max_body_size default: 20 MB.
MAX_BODY = 20_000_000


async def read_body(request: Request, limit: int = MAX_BODY) -> bytes:
    """The whole body, refused with 413 past `limit` bytes without reading more than that."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> ApiError:
    # The rest is never read: the answer closes the connection (app.py, RawPathRouting).
    return ApiError(413, "bad_request", f"request body larger than {limit} bytes")


async def json_object(request: Request) -> dict[str, Any]:
    body = await read_body(request)
    if not body.strip():
        return {}
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        raise bad_request("not_json") from None
    if isinstance(value, str):
        raise bad_request(
            "invalid payload: the request body JSON-decoded to a string. Is the input doubly-JSON-encoded?"
        )
    if not isinstance(value, dict):
        raise bad_request("not_json")
    return value


def require(body: dict[str, Any], *keys: str) -> None:
    """RabbitMQ's answer to missing keys: [{key_missing,routing_key},...]."""
    missing = [key for key in keys if key not in body]
    if missing:
        raise bad_request("[" + ",".join(f"{{key_missing,{key}}}" for key in missing) + "]")


def boolean(body: dict[str, Any], key: str, default: bool) -> bool:
    value = body.get(key, default)
    if value in (True, "true"):
        return True
    if value in (False, "false"):
        return False
    raise bad_request(["not_boolean", value])


def integer(body: dict[str, Any], key: str) -> int:
    value = body[key]
    if type(value) is int:
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    raise bad_request(["not_integer", value])


def text(body: dict[str, Any], key: str, default: str = "") -> str:
    value = body.get(key, default)
    if not isinstance(value, str):
        raise bad_request(["not_string", value])
    return value


def table(body: dict[str, Any], key: str) -> dict[str, Any]:
    """AMQP arguments from JSON. RabbitMQ takes a non-object (a list) as no arguments. Values an AMQP
    field table cannot hold (an integer past 64 bits, say) are refused here, before anything keeps them."""
    value = body.get(key)
    if not isinstance(value, dict):
        return {}
    check_table(value)
    return value


def check_table(value: dict[str, Any]) -> None:
    try:
        encode.field_table(value)
    except (ValueError, TypeError, OverflowError, struct.error, RecursionError, PAMQPException):
        raise bad_request(["invalid_table", json.dumps(value)[:200]]) from None
