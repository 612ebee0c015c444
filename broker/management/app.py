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
from urllib.parse import unquote

import trio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from leveret.broker.exchanges.registry import EXCHANGE_TYPES
from leveret.broker.management import serializers as show
from leveret.broker.management.auth import NotAuthorised, login, require_administrator
from leveret.broker.management.metrics import exposition, metrics_registry
from leveret.broker.management.web import web_routes
from leveret.broker.node import Node
from leveret.broker.vhost import VirtualHost
from leveret.config import User

NOT_FOUND = {"error": "Object Not Found", "reason": "Not Found"}
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
# Tags that see every vhost and every connection; a plain "management" user sees only its own.
SEE_ALL_TAGS = frozenset({"monitoring", "administrator"})
# RabbitMQ's name for the default exchange ("") in paths.
DEFAULT_EXCHANGE_ALIAS = "amq.default"
# Seconds /api/nodes waits for another node's stats over the peer link.
REMOTE_STATS_TIMEOUT = 1.0

log = logging.getLogger(__name__)


class NotFound(Exception):
    pass


class Api:
    """The handlers, bound to one node."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.started = time.monotonic()  # built as the node starts: its uptime
        listener = node.config.listeners.management
        per_object = listener is not None and listener.return_per_object_metrics
        self.registry = metrics_registry(node, per_object=per_object)
        self.per_object_registry = metrics_registry(node, per_object=True)

    # ---- helpers --------------------------------------------------------------------------------

    def user(self, request: Request) -> User:
        client = request.client.host if request.client is not None else None
        return login(self.node.authority.users, request.headers.get("authorization"), client)

    def _sees_all(self, user: User) -> bool:
        return bool(SEE_ALL_TAGS.intersection(user.tags))

    def vhosts(self, user: User) -> list[VirtualHost]:
        permitted = self.node.authority.permissions
        return [
            v
            for name, v in sorted(self.node.vhosts.items())
            if self._sees_all(user) or (user.name, name) in permitted
        ]

    def vhost(self, request: Request, user: User) -> VirtualHost:
        name = param(request, "vhost")
        vhost = self.node.vhosts.get(name)
        if vhost is None:
            raise NotFound
        if vhost not in self.vhosts(user):
            raise NotAuthorised({"error": "not_authorised", "reason": "Access refused."}, challenge=False)
        return vhost

    def scoped(self, request: Request, user: User) -> list[VirtualHost]:
        """The vhost named in the path, or every vhost the user may see."""
        return [self.vhost(request, user)] if "vhost" in request.path_params else self.vhosts(user)

    def sessions(self, user: User) -> list[Any]:
        sessions = sorted(self.node.connections, key=show.connection_name)
        return sessions if self._sees_all(user) else [s for s in sessions if s.username == user.name]

    # ---- endpoints ------------------------------------------------------------------------------

    async def overview(self, request: Request) -> Response:
        self.user(request)
        return JSONResponse(show.overview(self.node, EXCHANGE_TYPES))

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

    async def vhosts_list(self, request: Request) -> Response:
        return JSONResponse([show.vhost(self.node, v) for v in self.vhosts(self.user(request))])

    async def vhost_one(self, request: Request) -> Response:
        return JSONResponse(show.vhost(self.node, self.vhost(request, self.user(request))))

    async def exchanges(self, request: Request) -> Response:
        vhosts = self.scoped(request, self.user(request))
        return JSONResponse([show.exchange(v, x) for v in vhosts for _, x in sorted(v.exchanges.items())])

    async def exchange(self, request: Request) -> Response:
        vhost = self.vhost(request, self.user(request))
        name = param(request, "name")
        found = vhost.exchanges.get("" if name == DEFAULT_EXCHANGE_ALIAS else name)
        if found is None:
            raise NotFound
        return JSONResponse(show.exchange(vhost, found))

    async def queues(self, request: Request) -> Response:
        vhosts = self.scoped(request, self.user(request))
        return JSONResponse([show.queue(self.node, q) for v in vhosts for _, q in sorted(v.queues.items())])

    async def queue(self, request: Request) -> Response:
        vhost = self.vhost(request, self.user(request))
        found = vhost.queues.get(param(request, "name"))
        if found is None:
            raise NotFound
        return JSONResponse(show.queue_details(self.node, found))

    async def bindings(self, request: Request) -> Response:
        vhosts = self.scoped(request, self.user(request))
        return JSONResponse([b for v in vhosts for b in show.bindings(v)])

    async def connections(self, request: Request) -> Response:
        sessions = self.sessions(self.user(request))
        return JSONResponse([show.connection(self.node, s) for s in sessions])

    async def channels(self, request: Request) -> Response:
        sessions = self.sessions(self.user(request))
        return JSONResponse([show.channel(self.node, ch) for ch in show.channels_of(sessions)])

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
        return JSONResponse([show.user(u) for u in users])

    async def aliveness(self, request: Request) -> Response:
        # RabbitMQ declares, publishes to and reads back a queue; this read-only slice only checks that the
        # vhost exists and that the node answers from its event loop.
        self.vhost(request, self.user(request))
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


def get(path: str, endpoint: Callable[[Request], Awaitable[Response]]) -> Route:
    return Route(path, endpoint, methods=["GET"])


def build_app(node: Node) -> ASGIApp:
    api = Api(node)
    routes = [
        get("/api/overview", api.overview),
        get("/api/nodes", api.nodes),
        get("/api/nodes/{name}", api.node_one),
        get("/api/whoami", api.whoami),
        get("/api/vhosts", api.vhosts_list),
        get("/api/vhosts/{vhost}", api.vhost_one),
        get("/api/exchanges", api.exchanges),
        get("/api/exchanges/{vhost}", api.exchanges),
        # The default exchange's name is empty: RabbitMQ's path for it is /api/exchanges/%2F/amq.default.
        get("/api/exchanges/{vhost}/{name}", api.exchange),
        get("/api/queues", api.queues),
        get("/api/queues/{vhost}", api.queues),
        get("/api/queues/{vhost}/{name}", api.queue),
        get("/api/bindings", api.bindings),
        get("/api/bindings/{vhost}", api.bindings),
        get("/api/connections", api.connections),
        get("/api/channels", api.channels),
        get("/api/consumers", api.consumers),
        get("/api/consumers/{vhost}", api.consumers),
        get("/api/users", api.users),
        get("/api/aliveness-test/{vhost}", api.aliveness),
        get("/api/health/checks/alarms", api.alarms),
        get("/metrics", api.metrics),
        get("/metrics/per-object", api.per_object_metrics),
        *web_routes(),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={NotAuthorised: _not_authorised, NotFound: _not_found, HTTPException: _http_error},
    )
    return RawPathRouting(app)


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
    one path segment (ASGI's `path` is already decoded, so /api/queues/%2F/q would read as four segments)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            raw = scope.get("raw_path") or scope["path"].encode()
            scope = {**scope, "path": raw.split(b"?", 1)[0].decode("latin-1")}
        await self.app(scope, receive, send)


def param(request: Request, key: str) -> str:
    return unquote(request.path_params[key])
