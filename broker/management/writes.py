"""Declaring and deleting exchanges, queues and bindings, purging queues and closing connections over HTTP.

Each change is the AMQP operation the user could make on a channel: the vhost's own declare, delete, bind
and purge, after the same permission checks, so validation and error texts are the AMQP ones (answered as
RabbitMQ's API answers them, amqp_errors.py). Success is 201 for something new, 204 otherwise.
"""

from __future__ import annotations

from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from leveret.amqp.constants import ACCESS_REFUSED, CONNECTION_FORCED, NOT_FOUND
from leveret.amqp.errors import AMQPError, ChannelError, ConnectionLevelError
from leveret.broker.auth import VhostPermissions
from leveret.broker.cluster.proxy import is_proxy
from leveret.broker.cluster.remote_codec import PURGE, Call
from leveret.broker.cluster.replication import ReplicatedJournal
from leveret.broker.exchanges.base import Exchange
from leveret.broker.exchanges.registry import exchange_class
from leveret.broker.management import serializers as show
from leveret.broker.management.amqp_errors import declare_error
from leveret.broker.management.auth import NotAuthorised
from leveret.broker.management.bodies import boolean, json_object, table, text
from leveret.broker.management.context import Context, NotFound, bad_request, exchange_param, param
from leveret.broker.management.through_cluster import ask_leader, through_cluster
from leveret.broker.queues.queue import Queue
from leveret.broker.vhost import DEFAULT_EXCHANGE, VirtualHost
from leveret.config import User


def made(created: bool) -> Response:
    """201 when something was created, else 204."""
    return Response(status_code=201 if created else 204)


def no_content() -> Response:
    return Response(status_code=204)


# What RabbitMQ tells a client whose connection is closed over HTTP without an X-Reason header.
DEFAULT_CLOSE_REASON = "Closed via management plugin"
NOT_YOURS = {"error": "not_authorised", "reason": "User not authorised to access object"}
MAX_NAME_BYTES = 255


def check_name_length(kind: str, name: str) -> None:
    size = len(name.encode())
    if size > MAX_NAME_BYTES:
        raise bad_request(f"{kind} should be less than {MAX_NAME_BYTES} bytes, actually was {size}\n")


def flag(request: Request, key: str) -> bool:
    """A query flag such as ?if-unused=true."""
    return request.query_params.get(key) == "true"


def check(
    permissions: VhostPermissions, user: User, vhost: VirtualHost, action: str, kind: str, name: str
) -> None:
    permissions.check(user.name, vhost.name, action, kind, name)


class Writes(Context):
    # ---- exchanges --------------------------------------------------------------------------------

    async def put_exchange(self, request: Request) -> Response:
        user = self.user(request)
        vhost, permissions = self.vhost_to_change(request, user)
        body = await json_object(request)
        name = exchange_param(request)
        check_name_length("exchange", name)
        kind = text(body, "type", "direct")
        durable = boolean(body, "durable", False)
        auto_delete = boolean(body, "auto_delete", False)
        internal = boolean(body, "internal", False)
        arguments = table(body, "arguments")
        created = name not in vhost.exchanges
        try:
            exchange_class(kind)
            check(permissions, user, vhost, "configure", "exchange", name)
            alternate = arguments.get("alternate-exchange")
            if isinstance(alternate, str):
                check(permissions, user, vhost, "write", "exchange", alternate)
            await through_cluster(
                self.node,
                lambda: vhost.declare_exchange(
                    name,
                    kind,
                    durable=durable,
                    auto_delete=auto_delete,
                    internal=internal,
                    arguments=arguments,
                ),
            )
        except AMQPError as error:
            raise declare_error(error) from None
        return made(created)

    async def delete_exchange(self, request: Request) -> Response:
        user = self.user(request)
        vhost, permissions = self.vhost_to_change(request, user)
        name = exchange_param(request)
        if name not in vhost.exchanges:
            raise NotFound
        try:
            check(permissions, user, vhost, "configure", "exchange", name)
            if_unused = flag(request, "if-unused")
            await through_cluster(self.node, lambda: vhost.delete_exchange(name, if_unused=if_unused))
        except AMQPError as error:
            raise declare_error(error) from None
        return no_content()

    # ---- queues -----------------------------------------------------------------------------------

    async def put_queue(self, request: Request) -> Response:
        user = self.user(request)
        vhost, permissions = self.vhost_to_change(request, user)
        body = await json_object(request)
        name = param(request, "name")
        check_name_length("queue", name)
        durable = boolean(body, "durable", False)
        auto_delete = boolean(body, "auto_delete", False)
        arguments = table(body, "arguments")
        created = name not in vhost.queues
        try:
            check(permissions, user, vhost, "configure", "queue", name)
            await through_cluster(
                self.node,
                lambda: vhost.declare_queue(
                    name,
                    owner=None,
                    durable=durable,
                    exclusive=False,
                    auto_delete=auto_delete,
                    arguments=arguments,
                ),
            )
        except AMQPError as error:
            raise declare_error(error) from None
        return made(created)

    def _queue(self, request: Request, user: User) -> tuple[VirtualHost, VhostPermissions, Queue]:
        vhost, permissions = self.vhost_to_change(request, user)
        queue = vhost.queues.get(param(request, "name"))
        if queue is None:
            raise NotFound
        return vhost, permissions, queue

    async def delete_queue(self, request: Request) -> Response:
        user = self.user(request)
        vhost, permissions, queue = self._queue(request, user)
        try:
            check(permissions, user, vhost, "configure", "queue", queue.name)
            vhost.check_exclusive_access(queue, None)  # no HTTP request owns an exclusive queue
            if_unused, if_empty = flag(request, "if-unused"), flag(request, "if-empty")
            await through_cluster(
                self.node, lambda: vhost.delete_queue(queue, if_unused=if_unused, if_empty=if_empty)
            )
        except AMQPError as error:
            raise declare_error(error) from None
        return no_content()

    async def purge_queue(self, request: Request) -> Response:
        user = self.user(request)
        vhost, permissions, queue = self._queue(request, user)
        try:
            check(permissions, user, vhost, "read", "queue", queue.name)
            vhost.check_exclusive_access(queue, None)
        except AMQPError as error:
            raise declare_error(error) from None
        if is_proxy(queue) or isinstance(queue.journal, ReplicatedJournal):  # by the leader, replicated
            result = await ask_leader(self.node, Call(vhost.name, queue.name, PURGE))
            if result.error_code:
                raise declare_error(ChannelError(result.error_code, result.error_text))
        else:
            queue.purge()
        return no_content()

    # ---- bindings ---------------------------------------------------------------------------------

    def _ends(
        self, request: Request, user: User, *, for_change: bool
    ) -> tuple[VirtualHost, VhostPermissions | None, Exchange, Queue | Exchange]:
        """The binding's vhost, source and destination from the path (/e/{source}/q|e/{destination})."""
        if for_change:
            vhost, permissions = self.vhost_to_change(request, user)
        else:
            vhost, permissions = self.vhost(request, user), None
        if request.path_params["kind"] not in ("q", "e"):
            raise NotFound
        to_queue = request.path_params["kind"] == "q"
        destination_name = param(request, "destination")
        destination = (vhost.queues if to_queue else vhost.exchanges).get(
            destination_name if to_queue else exchange_param(request, "destination")
        )
        source = vhost.exchanges.get(exchange_param(request, "source"))
        if not for_change and (source is None or destination is None):
            raise NotFound
        if destination is None:
            what = "queue" if to_queue else "exchange"
            raise declare_error(_not_found(what, destination_name, vhost))
        if source is None:
            raise declare_error(_not_found("exchange", param(request, "source"), vhost))
        return vhost, permissions, source, destination

    async def post_binding(self, request: Request) -> Response:
        user = self.user(request)
        vhost, permissions, source, destination = self._ends(request, user, for_change=True)
        assert permissions is not None
        body = await json_object(request)
        routing_key = text(body, "routing_key")
        arguments = table(body, "arguments")
        kind = "queue" if isinstance(destination, Queue) else "exchange"
        try:
            check(permissions, user, vhost, "write", kind, destination.name)
            check(permissions, user, vhost, "read", "exchange", source.name)
            if source.name == DEFAULT_EXCHANGE or destination.name == DEFAULT_EXCHANGE and kind == "exchange":
                raise ChannelError(ACCESS_REFUSED, "operation not permitted on the default exchange")
            if isinstance(destination, Queue):
                vhost.check_exclusive_access(destination, None)
            await through_cluster(self.node, lambda: vhost.bind(source, destination, routing_key, arguments))
        except AMQPError as error:
            raise declare_error(error) from None
        key = show.properties_key(routing_key, arguments)
        location = f"{quote(destination.name, safe='')}/{quote(key, safe='')}"
        return Response(status_code=201, headers={"location": location})

    def _between(self, vhost: VirtualHost, source: Exchange, destination: Queue | Exchange) -> list[dict]:
        return [
            b
            for b in show.bindings(vhost)
            if b["source"] == source.name
            and b["destination"] == destination.name
            and (b["destination_type"] == "queue") == isinstance(destination, Queue)
        ]

    async def bindings_between(self, request: Request) -> Response:
        user = self.user(request)
        vhost, _, source, destination = self._ends(request, user, for_change=False)
        return JSONResponse(self._between(vhost, source, destination))

    async def binding(self, request: Request) -> Response:
        user = self.user(request)
        vhost, _, source, destination = self._ends(request, user, for_change=False)
        key = param(request, "props")
        for b in self._between(vhost, source, destination):
            if b["properties_key"] == key:
                return JSONResponse(b)
        raise NotFound

    async def delete_binding(self, request: Request) -> Response:
        user = self.user(request)
        vhost, permissions, source, destination = self._ends(request, user, for_change=True)
        assert permissions is not None
        key = param(request, "props")
        found = next(
            (
                b
                for b in source.bindings
                if b.destination is destination and show.properties_key(b.routing_key, b.arguments) == key
            ),
            None,
        )
        if found is None:
            raise NotFound
        kind = "queue" if isinstance(destination, Queue) else "exchange"
        try:
            check(permissions, user, vhost, "write", kind, destination.name)
            check(permissions, user, vhost, "read", "exchange", source.name)
            if isinstance(destination, Queue):
                vhost.check_exclusive_access(destination, None)
            await through_cluster(
                self.node, lambda: vhost.unbind(source, destination, found.routing_key, found.arguments)
            )
        except AMQPError as error:
            raise declare_error(error) from None
        return no_content()

    # ---- connections ------------------------------------------------------------------------------

    async def delete_connection(self, request: Request) -> Response:
        """Close a connection with 320 CONNECTION_FORCED and the X-Reason header's text (RabbitMQ's). An
        administrator closes any connection, other users only their own."""
        user = self.user(request)
        name = param(request, "name")
        for session in self.node.connections:
            if show.connection_name(session) == name:
                if "administrator" not in user.tags and session.username != user.name:
                    raise NotAuthorised(NOT_YOURS, challenge=False)
                reason = request.headers.get("x-reason", DEFAULT_CLOSE_REASON)
                session.close(ConnectionLevelError(CONNECTION_FORCED, reason))
                return no_content()
        raise NotFound


def _not_found(kind: str, name: str, vhost: VirtualHost) -> AMQPError:
    return ChannelError(NOT_FOUND, f"no {kind} '{name}' in vhost '{vhost.name}'")
