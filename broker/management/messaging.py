"""The HTTP way in: publish to an exchange and get from a queue, with RabbitMQ's bodies and answers.

A publish answers once its message is as safe as a confirm would say (a persistent message on a durable
queue: after the fsync), with {"routed": true|false}. A get answers a list of messages with their
properties, payload (text when it is UTF-8 and `encoding` is auto, else base64) and the queue's count.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import struct
from typing import Any

import trio
from pamqp.commands import Basic
from pamqp.exceptions import PAMQPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from leveret.amqp.errors import AMQPError, ChannelError
from leveret.amqp.properties import decode_properties, encode_properties
from leveret.broker import direct
from leveret.broker.cluster.proxy import ProxyQueue
from leveret.broker.cluster.remote import Ticket
from leveret.broker.cluster.remote_codec import GET, Call
from leveret.broker.management.amqp_errors import get_error, publish_error
from leveret.broker.management.bodies import check_table, integer, json_object, require
from leveret.broker.management.context import Context, bad_request, exchange_param, param
from leveret.broker.management.serializers import jsonable
from leveret.broker.management.through_cluster import ask_leader, through_cluster
from leveret.broker.message import Message
from leveret.broker.queues.queue import Queue

# Seconds between looks at the resource alarms while an HTTP publish waits for them to clear.
ALARM_POLL = 0.1
# How long an HTTP publish routed to queues led elsewhere waits for their leaders' answers.
LEADER_WAIT = 5.0
_LEADER_POLL = 0.005
# How long a get waits for a queue's head to be read back from disk (a read takes milliseconds).
HEAD_WAIT_TIMEOUT = 30.0
# JSON property names and pamqp's, where they differ.
_PAMQP_NAMES = {"type": "message_type"}
_JSON_NAMES = {"message_type": "type"}
_INTEGER_PROPERTIES = ("delivery_mode", "priority", "timestamp")
_TEXT_PROPERTIES = (
    "content_type", "content_encoding", "correlation_id", "reply_to", "expiration", "message_id", "type",
    "user_id", "app_id", "cluster_id",
)  # fmt: skip


def properties_raw(values: Any) -> bytes:
    """Content properties from a JSON object, as RabbitMQ's API reads them; unknown keys are ignored."""
    if not isinstance(values, dict):
        raise bad_request(["not_object", values])
    fields: dict[str, Any] = {}
    for key in _INTEGER_PROPERTIES:
        if key in values:
            if type(values[key]) is not int:
                raise bad_request(["not_int", key])
            fields[key] = values[key]
    for key in _TEXT_PROPERTIES:
        if key in values:
            if not isinstance(values[key], str):
                raise bad_request(["not_string", key])
            fields[_PAMQP_NAMES.get(key, key)] = values[key]
    if "headers" in values:
        if not isinstance(values["headers"], dict):
            raise bad_request(["not_object", "headers"])
        check_table(values["headers"])
        fields["headers"] = values["headers"]
    try:
        if "timestamp" in fields:
            fields["timestamp"] = datetime.datetime.fromtimestamp(fields["timestamp"], datetime.UTC)
        return encode_properties(Basic.Properties(**fields))
    except (ValueError, TypeError, OverflowError, OSError, struct.error, PAMQPException) as exc:
        raise bad_request(["invalid_properties", str(exc)]) from None


def properties_json(message: Message) -> dict[str, Any] | list[Any]:
    """The message's properties as RabbitMQ shows them; none at all is [] (an empty Erlang proplist)."""
    properties = decode_properties(message.properties_raw)
    shown = {}
    for name in properties.attributes():
        value = getattr(properties, name)
        # pamqp reads an absent cluster_id (deprecated, never set by clients) as "".
        if value is not None and not (name == "cluster_id" and value == ""):
            shown[_JSON_NAMES.get(name, name)] = jsonable(value)
    return shown or []


def payload_bytes(body: dict[str, Any]) -> bytes:
    payload, encoding = body["payload"], body["payload_encoding"]
    if not isinstance(payload, str):
        raise bad_request(["not_string", payload])
    if encoding == "string":
        return payload.encode()
    if encoding == "base64":
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise bad_request(["not_base64", payload]) from None
    raise bad_request(["unsupported_encoding", encoding])


def payload_json(payload: bytes | bytearray, encoding: str) -> tuple[str, str]:
    if encoding == "auto":
        try:
            return payload.decode(), "string"
        except UnicodeDecodeError:
            pass
    return base64.b64encode(payload).decode("ascii"), "base64"



class _HeadWaiter:
    """A get's getter (queues/paging.py's HeadGetter): set once the queue's head is back in memory."""

    def __init__(self) -> None:
        self.ready = trio.Event()

    def head_ready(self, queue: Any) -> None:
        self.ready.set()

class Messaging(Context):
    async def publish(self, request: Request) -> Response:
        user = self.user(request)
        vhost, permissions = self.vhost_to_change(request, user)
        body = await json_object(request)
        require(body, "routing_key", "properties", "payload", "payload_encoding")
        routing_key = body["routing_key"]
        if not isinstance(routing_key, str):
            raise bad_request(["not_string", routing_key])
        raw = properties_raw(body["properties"])
        payload = payload_bytes(body)
        name = exchange_param(request)
        if self.node.alarms.active:
            # Under a resource alarm an AMQP publisher is blocked; an HTTP one waits too, as in RabbitMQ.
            while self.node.alarms.active:
                await trio.sleep(ALARM_POLL)
            vhost, permissions = self.vhost_to_change(request, user)
        try:
            if name in vhost.exchanges:
                permissions.check(user.name, vhost.name, "write", "exchange", name)
            published = direct.publish(vhost, user.name, name, routing_key, raw, payload)
        except AMQPError as error:
            raise publish_error(error) from None
        self.node.message_totals.count_direct(vhost.name, published=1)
        ticket = published.position
        if isinstance(ticket, Ticket):  # routed to queues led by other nodes: their leaders answer
            with trio.move_on_after(LEADER_WAIT):
                while ticket.outcome(self.node.durable_position()) is None:
                    await trio.sleep(_LEADER_POLL)
        elif published.position:
            safe = trio.Event()
            self.node.when_durable(published.position, safe.set)
            await safe.wait()
        return JSONResponse({"routed": published.routed})

    async def _get_from_leader(
        self, queue: ProxyQueue, count: int, ackmode: direct.AckMode
    ) -> list[direct.Got]:
        """direct.get for a queue led by another node: each message a basic.get the leader answers, then
        all of them settled there as `ackmode` says."""
        got: list[direct.Got] = []
        for _ in range(count):
            result = await ask_leader(self.node, Call(queue.vhost, queue.name, GET))
            if result.error_code:
                raise get_error(ChannelError(result.error_code, result.error_text))
            if result.message is None:
                break
            entry = queue.received(result.node, result.generation, result.seq, result.message,
                                   result.redelivered, True)
            got.append(direct.Got(entry.message, entry.redelivered, result.message_count))
            if ackmode == "ack_requeue_false":
                queue.settle([entry.seq])
            elif ackmode == "reject_requeue_false":
                queue.reject([entry.seq])
            else:
                queue.requeue([entry.seq])
        return got

    async def _get_here(self, queue: Queue, count: int, ackmode: direct.AckMode) -> list[direct.Got]:
        """direct.get for a queue led here, waiting for a head read back from disk as basic.get does."""
        got: list[direct.Got] = []
        seqs: list[int] = []
        while True:
            waiter = _HeadWaiter()
            if direct.take(queue, count, got, seqs, waiter):
                break
            with trio.move_on_after(HEAD_WAIT_TIMEOUT) as waited:
                await waiter.ready.wait()
            if waited.cancelled_caught:
                break  # the chunk is not back (its read is stuck): answer with what was taken
        direct.finish(queue, seqs, ackmode)
        return got

    async def get(self, request: Request) -> Response:
        user = self.user(request)
        vhost, permissions = self.vhost_to_change(request, user)
        body = await json_object(request)
        require(body, "count", "ackmode", "encoding")
        count = integer(body, "count")
        ackmode = body["ackmode"]
        if ackmode not in direct.ACK_MODES:
            raise bad_request(["unsupported_ackmode", ackmode])
        encoding = body["encoding"]
        if encoding not in ("auto", "base64"):
            raise bad_request("Unsupported encoding. Please use auto or base64.")
        truncate = integer(body, "truncate") if body.get("truncate") not in (None, "") else None
        name = param(request, "name")
        try:
            queue = await through_cluster(self.node, lambda: vhost.queue(name))
            vhost.check_exclusive_access(queue, None)
            permissions.check(user.name, vhost.name, "read", "queue", name)
        except AMQPError as error:
            raise get_error(error) from None
        answers = []
        if isinstance(queue, ProxyQueue):
            taken = await self._get_from_leader(queue, max(count, 0), ackmode)
        else:
            taken = await self._get_here(queue, max(count, 0), ackmode)
        queue.delivered += len(taken)
        queue.redelivered += sum(1 for got in taken if got.redelivered)
        if ackmode == "ack_requeue_false":
            queue.acked += len(taken)
        self.node.message_totals.count_direct(
            vhost.name, delivered=len(taken), acked=len(taken) if ackmode == "ack_requeue_false" else 0
        )
        for got in taken:
            message = got.message
            shown = message.body if truncate is None else message.body[: max(truncate, 0)]
            payload, payload_encoding = payload_json(shown, encoding)
            answers.append(
                {
                    "payload_bytes": len(message.body),
                    "redelivered": got.redelivered,
                    "exchange": message.exchange,
                    "routing_key": message.routing_key,
                    "message_count": got.remaining,
                    "properties": properties_json(message),
                    "payload": payload,
                    "payload_encoding": payload_encoding,
                }
            )
        return JSONResponse(answers)
