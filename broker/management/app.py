"""The management API's routes: RabbitMQ's GET endpoints over the live node, and /metrics.

Errors answer as RabbitMQ's management plugin does: 404 {"error":"Object Not Found","reason":"Not Found"},
401 from the auth checks, 405 with an Allow header and no body for methods an endpoint does not serve.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from leveret.amqp.errors import AMQPError
from leveret.broker import direct
from leveret.broker.cluster.proxy import is_proxy
from leveret.broker.exchanges.base import Exchange
from leveret.broker.exchanges.registry import EXCHANGE_TYPES
from leveret.broker.management import serializers as show
from leveret.broker.management.access import Access
from leveret.broker.management.auth import NotAuthorised, require_administrator
from leveret.broker.management.context import ApiError, Context, NotFound, exchange_param, param
from leveret.broker.management.definitions import Definitions
from leveret.broker.management.messaging import Messaging
from leveret.broker.management.metrics import exposition, metrics_registry
from leveret.broker.management.policies import Policies
from leveret.broker.management.rates import MessageRates
from leveret.broker.management.shaping import SHAPING, shape
from leveret.broker.management.through_cluster import through_cluster
from leveret.broker.management.web import web_routes
from leveret.broker.management.writes import Writes
from leveret.broker.node import Node
from leveret.broker.queues.queue import Queue
from leveret.broker.vhost import VirtualHost

log = logging.getLogger(__name__)

NOT_FOUND = {"error": "Object Not Found", "reason": "Not Found"}
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
# RabbitMQ's aliveness test: this queue (left declared, as RabbitMQ leaves it) and message.
ALIVENESS_QUEUE = "aliveness-test"
ALIVENESS_MESSAGE = b"test_message"
EMPTY_PROPERTIES = b"\x00\x00"  # a content header's property flags with nothing set
# Seconds /api/nodes waits for another node's stats over the peer link.
REMOTE_STATS_TIMEOUT = 1.0


class Api(Context):
    """The read handlers, bound to one node."""

    def __init__(self, node: Node, rates: MessageRates) -> None:
        super().__init__(node)
        self.rates = rates
        self.started = time.monotonic()  # built as the node starts: its uptime
        listener = node.config.listeners.management
        per_object = listener is not None and listener.return_per_object_metrics
        self.registry = metrics_registry(node, per_object=per_object)
        self.per_object_registry = metrics_registry(node, per_object=True)

    # ---- endpoints ------------------------------------------------------------------------------

    async def overview(self, request: Request) -> Response:
        self.user(request)
        return JSONResponse(
            show.overview(self.node, EXCHANGE_TYPES) | {"message_stats": self.rates.overview()}
        )

    async def nodes(self, request: Request) -> Response:
        self.user(request)
        remote = await self._remote_stats()
        return JSONResponse(show.nodes(self.node, self._uptime_ms(), remote))

    async def node_one(self, request: Request) -> Response:
        self.user(request)
        name = param(request, "name")
        remote = await self._remote_stats()
        found = [n for n in show.nodes(self.node, self._uptime_ms(), remote) if n["name"] == name]
        if not found:
            raise NotFound
        return JSONResponse(found[0])

    async def _remote_stats(self) -> dict[str, Any]:
        """Each other live node's own stats, asked over the peer links at once; a node that does not
        answer within a second is shown without them."""
        cluster = self.node.cluster
        found: dict[str, Any] = {}
        if cluster is None or cluster.ask_node is None:
            return found
        ask = cluster.ask_node

        async def one(name: str) -> None:
            with trio.move_on_after(REMOTE_STATS_TIMEOUT):
                try:
                    found[name] = json.loads(await ask(name, show.NODE_STATS, b""))
                except Exception as error:  # a link down, a refusal: the node is shown without stats
                    log.info("no stats from %s: %s", name, error)

        async with trio.open_nursery() as nursery:
            for name in cluster.membership.alive_nodes():
                if name != cluster.name:
                    nursery.start_soon(one, name)
        return found

    def _uptime_ms(self) -> int:
        return int((time.monotonic() - self.started) * 1000)

    async def whoami(self, request: Request) -> Response:
        return JSONResponse(show.whoami(self.user(request)))

    def _vhost_json(self, vhost: VirtualHost) -> dict[str, Any]:
        return show.vhost(self.node, vhost) | {"message_stats": self.rates.vhost(vhost.name)}

    async def vhosts_list(self, request: Request) -> Response:
        return JSONResponse([self._vhost_json(v) for v in self.vhosts(self.user(request))])

    async def vhost_one(self, request: Request) -> Response:
        return JSONResponse(self._vhost_json(self.vhost(request, self.user(request))))

    async def exchanges(self, request: Request) -> Response:
        vhosts = self.scoped(request, self.user(request))
        return JSONResponse(
            [self._exchange_json(v, x) for v in vhosts for _, x in sorted(v.exchanges.items())]
        )

    def _exchange_json(self, vhost: VirtualHost, exchange: Exchange) -> dict[str, Any]:
        return show.exchange(vhost, exchange) | {"message_stats": self.rates.exchange(exchange)}

    def _queue_json(self, queue: Queue, *, details: bool = False) -> dict[str, Any]:
        shown = show.queue_details(self.node, queue) if details else show.queue(self.node, queue)
        return shown | {"message_stats": self.rates.queue(queue)}

    async def exchange(self, request: Request) -> Response:
        vhost = self.vhost(request, self.user(request))
        found = vhost.exchanges.get(exchange_param(request))
        if found is None:
            raise NotFound
        return JSONResponse(self._exchange_json(vhost, found))

    async def queues(self, request: Request) -> Response:
        vhosts = self.scoped(request, self.user(request))
        await self._leader_counts([q for v in vhosts for q in v.queues.values()])
        return JSONResponse([self._queue_json(q) for v in vhosts for _, q in sorted(v.queues.items())])

    async def queue(self, request: Request) -> Response:
        vhost = self.vhost(request, self.user(request))
        found = vhost.queues.get(param(request, "name"))
        if found is None:
            raise NotFound
        await self._leader_counts([found])
        found = vhost.queues.get(found.name, found)  # leadership may have moved meanwhile
        return JSONResponse(self._queue_json(found, details=True))

    async def _leader_counts(self, queues: list[Any]) -> None:
        """In a cluster, a queue led by another node shows its leader's counts: asked over the peer links,
        all at once; a leader that does not answer within a second leaves the last counts heard."""
        cluster = self.node.cluster
        proxies = [q for q in queues if is_proxy(q)]
        if cluster is None or not proxies:
            return
        done = trio.Event()
        left = 0

        def answered() -> None:
            nonlocal left
            left -= 1
            if left <= 0:
                done.set()

        left = cluster.remote.ask_counts(proxies, answered)
        if left:
            with trio.move_on_after(REMOTE_STATS_TIMEOUT):
                await done.wait()

    async def bindings(self, request: Request) -> Response:
        vhosts = self.scoped(request, self.user(request))
        return JSONResponse([b for v in vhosts for b in show.bindings(v)])

    async def exchange_bindings(self, request: Request) -> Response:
        """/api/exchanges/{vhost}/{name}/bindings/source|destination: the bindings from or to an exchange."""
        vhost = self.vhost(request, self.user(request))
        exchange = vhost.exchanges.get(exchange_param(request))
        side = request.path_params["side"]
        if exchange is None or side not in ("source", "destination"):
            raise NotFound
        return JSONResponse(
            [
                b
                for b in show.bindings(vhost)
                if side == "source"
                and b["source"] == exchange.name
                or side == "destination"
                and b["destination_type"] == "exchange"
                and b["destination"] == exchange.name
            ]
        )

    async def queue_bindings(self, request: Request) -> Response:
        vhost = self.vhost(request, self.user(request))
        queue = vhost.queues.get(param(request, "name"))
        if queue is None:
            raise NotFound
        listed = show.bindings(vhost)
        return JSONResponse(
            [b for b in listed if b["destination_type"] == "queue" and b["destination"] == queue.name]
        )

    async def connections(self, request: Request) -> Response:
        sessions = self.sessions(self.user(request))
        return JSONResponse([show.connection(self.node, s) for s in sessions])

    async def channels(self, request: Request) -> Response:
        sessions = self.sessions(self.user(request))
        return JSONResponse(
            [
                show.channel(self.node, ch) | {"message_stats": self.rates.channel(ch)}
                for ch in show.channels_of(sessions)
            ]
        )

    async def consumers(self, request: Request) -> Response:
        names = {v.name for v in self.scoped(request, self.user(request))}
        channels = show.channels_of(self.node.connections)
        return JSONResponse(
            [
                show.consumer(self.node, c)
                for ch in channels
                if ch.vhost.name in names
                for c in ch.consumers.values()
            ]
        )

    async def users(self, request: Request) -> Response:
        require_administrator(self.user(request))
        users = sorted(self.node.authority.users.values(), key=lambda u: u.name)
        limits = self.node.admin.user_limits
        return JSONResponse([show.user(u, limits.get(u.name)) for u in users])

    async def aliveness(self, request: Request) -> Response:
        """As RabbitMQ's: declare the queue aliveness-test, publish a message to it and read it back."""
        vhost = self.vhost(request, self.user(request))
        try:
            queue = await through_cluster(
                self.node,
                lambda: vhost.declare_queue(
                    ALIVENESS_QUEUE,
                    owner=None,
                    durable=False,
                    exclusive=False,
                    auto_delete=False,
                    arguments={},
                ),
            )
            direct.publish(vhost, "", "", ALIVENESS_QUEUE, EMPTY_PROPERTIES, ALIVENESS_MESSAGE)
            got = direct.get(queue, 1, "ack_requeue_false")
        except AMQPError as error:
            return JSONResponse({"status": "failed", "reason": error.reply_text}, status_code=503)
        if [g.message.body for g in got] != [ALIVENESS_MESSAGE]:
            return JSONResponse(
                {"status": "failed", "reason": "the message did not come back"}, status_code=503
            )
        return JSONResponse({"status": "ok"})

    async def alarms(self, request: Request) -> Response:
        self.user(request)
        active = sorted(self.node.alarms.active)
        if not active:
            return JSONResponse({"status": "ok"})
        node = show.node_name(self.node)
        body = {
            "status": "failed",
            "reason": "There are alarms in effect in the cluster",
            "alarms": [{"node": node, "resource": resource} for resource in active],
        }
        return JSONResponse(body, status_code=503)

    async def metrics(self, request: Request) -> Response:
        # Unauthenticated, as RabbitMQ's Prometheus endpoint: aggregated unless configured per object.
        return Response(exposition(self.registry), media_type=PROMETHEUS_TEXT)

    async def per_object_metrics(self, request: Request) -> Response:
        return Response(exposition(self.per_object_registry), media_type=PROMETHEUS_TEXT)


Endpoint = Callable[[Request], Awaitable[Response]]


def route(path: str, **endpoints: Endpoint) -> Route:
    """One path, a handler per method (route("/api/x", GET=..., PUT=...)); other methods answer 405 with
    an Allow header listing these."""

    async def dispatch(request: Request) -> Response:
        # Starlette adds HEAD wherever there is GET.
        response = await endpoints.get(request.method, endpoints.get("GET"))(request)  # type: ignore[misc]
        if (
            request.method == "GET"
            and response.status_code == 200
            and any(k in request.query_params for k in SHAPING)
        ):
            return JSONResponse(shape(json.loads(bytes(response.body)), request.query_params))
        return response

    return Route(path, dispatch, methods=list(endpoints))


def build_app(node: Node, rates: MessageRates) -> ASGIApp:
    api, writes, access, messaging = Api(node, rates), Writes(node), Access(node), Messaging(node)
    exported = Definitions(node)
    policies, operator = Policies(node, operator=False), Policies(node, operator=True)
    binding = "/api/bindings/{vhost}/e/{source}/{kind}/{destination}"
    routes = [
        route("/api/overview", GET=api.overview),
        route("/api/nodes", GET=api.nodes),
        route("/api/nodes/{name}", GET=api.node_one),
        route("/api/whoami", GET=api.whoami),
        route("/api/vhosts", GET=api.vhosts_list),
        route("/api/vhosts/{vhost}", GET=api.vhost_one, PUT=access.put_vhost, DELETE=access.delete_vhost),
        route("/api/vhosts/{vhost}/permissions", GET=access.vhost_permissions),
        route("/api/exchanges", GET=api.exchanges),
        route("/api/exchanges/{vhost}", GET=api.exchanges),
        # The default exchange's name is empty: RabbitMQ's path for it is /api/exchanges/%2F/amq.default.
        route(
            "/api/exchanges/{vhost}/{name}",
            GET=api.exchange,
            PUT=writes.put_exchange,
            DELETE=writes.delete_exchange,
        ),
        route("/api/queues", GET=api.queues),
        route("/api/queues/{vhost}", GET=api.queues),
        route("/api/queues/{vhost}/{name}", GET=api.queue, PUT=writes.put_queue, DELETE=writes.delete_queue),
        route("/api/exchanges/{vhost}/{name}/publish", POST=messaging.publish),
        route("/api/exchanges/{vhost}/{name}/bindings/{side}", GET=api.exchange_bindings),
        route("/api/queues/{vhost}/{name}/bindings", GET=api.queue_bindings),
        route("/api/queues/{vhost}/{name}/contents", DELETE=writes.purge_queue),
        route("/api/queues/{vhost}/{name}/get", POST=messaging.get),
        route("/api/bindings", GET=api.bindings),
        route("/api/bindings/{vhost}", GET=api.bindings),
        route(binding, GET=writes.bindings_between, POST=writes.post_binding),
        route(binding + "/{props}", GET=writes.binding, DELETE=writes.delete_binding),
        route("/api/connections", GET=api.connections),
        route("/api/connections/{name}", DELETE=writes.delete_connection),
        route("/api/channels", GET=api.channels),
        route("/api/consumers", GET=api.consumers),
        route("/api/consumers/{vhost}", GET=api.consumers),
        route("/api/users", GET=api.users),
        route("/api/users/{name}", GET=access.get_user, PUT=access.put_user, DELETE=access.delete_user),
        route("/api/users/{name}/permissions", GET=access.user_permissions),
        route("/api/permissions", GET=access.permissions),
        route(
            "/api/permissions/{vhost}/{user}",
            GET=access.permission,
            PUT=access.put_permission,
            DELETE=access.delete_permission,
        ),
        route("/api/topic-permissions", GET=access.topic_permissions),
        route(
            "/api/topic-permissions/{vhost}/{user}",
            GET=access.topic_permissions,
            PUT=access.put_topic_permission,
            DELETE=access.delete_topic_permission,
        ),
        route("/api/users/{name}/topic-permissions", GET=access.topic_permissions),
        route("/api/vhosts/{vhost}/topic-permissions", GET=access.topic_permissions),
        route("/api/vhost-limits", GET=access.vhost_limits),
        route("/api/vhost-limits/{vhost}", GET=access.vhost_limits),
        route(
            "/api/vhost-limits/{vhost}/{name}", PUT=access.put_vhost_limit, DELETE=access.delete_vhost_limit
        ),
        route("/api/user-limits", GET=access.user_limits),
        route("/api/user-limits/{user}", GET=access.user_limits),
        route(
            "/api/user-limits/{user}/{name}", PUT=access.put_user_limit, DELETE=access.delete_user_limit
        ),
        route("/api/definitions", GET=exported.export, POST=exported.import_),
        route("/api/definitions/{vhost}", GET=exported.export, POST=exported.import_),
        route("/api/parameters", GET=access.parameters),
        route("/api/policies", GET=policies.listing),
        route("/api/policies/{vhost}", GET=policies.listing),
        route("/api/policies/{vhost}/{name}", GET=policies.one, PUT=policies.put, DELETE=policies.delete),
        route("/api/operator-policies", GET=operator.listing),
        route("/api/operator-policies/{vhost}", GET=operator.listing),
        route(
            "/api/operator-policies/{vhost}/{name}",
            GET=operator.one,
            PUT=operator.put,
            DELETE=operator.delete,
        ),
        route("/api/aliveness-test/{vhost}", GET=api.aliveness),
        route("/api/health/checks/alarms", GET=api.alarms),
        route("/metrics", GET=api.metrics),
        route("/metrics/per-object", GET=api.per_object_metrics),
        *web_routes(),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={
            NotAuthorised: _not_authorised,
            NotFound: _not_found,
            ApiError: _api_error,
            HTTPException: _http_error,
            Exception: _internal_error,
        },
    )
    return RawPathRouting(app)


async def _api_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, ApiError)
    return JSONResponse(error.body, status_code=error.status)


async def _internal_error(request: Request, error: Exception) -> Response:
    """A bug in Leveret: logged with its traceback, answered without one."""
    log.error("management API: internal error on %s %s", request.method, request.url.path, exc_info=error)
    return JSONResponse({"error": "internal_error", "reason": "Internal Server Error"}, status_code=500)


async def _not_authorised(request: Request, error: Exception) -> Response:
    assert isinstance(error, NotAuthorised)
    if error.body is None:
        return Response(status_code=401, headers=error.headers)
    return JSONResponse(error.body, status_code=401, headers=error.headers)


async def _not_found(request: Request, error: Exception) -> Response:
    return JSONResponse(NOT_FOUND, status_code=404)


async def _http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    if error.status_code == 404:
        return JSONResponse(NOT_FOUND, status_code=404)
    return Response(status_code=error.status_code, headers=error.headers)


class RawPathRouting:
    """Route on the path as sent, then decode each parameter: a vhost named "/" arrives as %2F and must stay
    one path segment (ASGI's `path` is already decoded, so /api/queues/%2F/q would read as four segments).

    An error answered to a request with a body (refused before the body was read, perhaps) closes the
    connection: the unread rest must not be taken for the next request, nor the client reuse a connection the
    server is dropping."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw = scope.get("raw_path") or scope["path"].encode()
        scope = {**scope, "path": raw.split(b"?", 1)[0].decode("latin-1")}
        if not _has_body(scope):
            await self.app(scope, receive, send)
            return

        async def send_closing_on_error(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] >= 400:
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive, send_closing_on_error)


def _has_body(scope: Scope) -> bool:
    for name, value in scope.get("headers", []):
        if name == b"transfer-encoding" or name == b"content-length" and value.strip() not in (b"", b"0"):
            return True
    return False
