"""What every management handler needs: who is asking, which vhosts they may see or change, the path's
parameters, and RabbitMQ's error answers."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from starlette.requests import Request

from leveret.broker.auth import VhostPermissions
from leveret.broker.management import serializers as show
from leveret.broker.management.auth import NotAuthorised, login
from leveret.broker.node import Node
from leveret.broker.vhost import VirtualHost
from leveret.config import User

# Tags that see every vhost and every connection; a plain "management" user sees only its own.
SEE_ALL_TAGS = frozenset({"monitoring", "administrator"})
# RabbitMQ's name for the default exchange ("") in paths.
DEFAULT_EXCHANGE_ALIAS = "amq.default"
NO_VHOST_ACCESS = {"error": "not_authorised", "reason": "User not authorised to access virtual host"}


class NotFound(Exception):
    """Answered 404 {"error":"Object Not Found","reason":"Not Found"}."""


class ApiError(Exception):
    """An answer other than success: the status and RabbitMQ's {"error": ..., "reason": ...} body."""

    def __init__(self, status: int, error: str, reason: Any) -> None:
        super().__init__(reason)
        self.status = status
        self.body = {"error": error, "reason": reason}


def bad_request(reason: Any) -> ApiError:
    return ApiError(400, "bad_request", reason)


def param(request: Request, key: str) -> str:
    return unquote(request.path_params[key])


def exchange_param(request: Request, key: str = "name") -> str:
    """An exchange name from the path: amq.default stands for the default exchange ("")."""
    name = param(request, key)
    return "" if name == DEFAULT_EXCHANGE_ALIAS else name


class Context:
    """The node, and the questions each handler asks about the request's user."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def user(self, request: Request) -> User:
        client = request.client.host if request.client is not None else None
        return login(self.node.authority.users, request.headers.get("authorization"), client)

    @staticmethod
    def sees_all(user: User) -> bool:
        return bool(SEE_ALL_TAGS.intersection(user.tags))

    def vhosts(self, user: User) -> list[VirtualHost]:
        permitted = self.node.authority.permissions
        return [
            v
            for name, v in sorted(self.node.vhosts.items())
            if self.sees_all(user) or (user.name, name) in permitted
        ]

    def vhost(self, request: Request, user: User) -> VirtualHost:
        """The vhost named in the path, which the user may see (404, 401 otherwise)."""
        name = param(request, "vhost")
        vhost = self.node.vhosts.get(name)
        if vhost is None:
            raise NotFound
        if vhost not in self.vhosts(user):
            raise NotAuthorised(NO_VHOST_ACCESS, challenge=False)
        return vhost

    def vhost_to_change(self, request: Request, user: User) -> tuple[VirtualHost, VhostPermissions]:
        """The vhost named in the path and the user's permissions in it: a change over HTTP is made as the
        user would make it over AMQP, so it needs access to the vhost, whatever the user's tags."""
        name = param(request, "vhost")
        vhost = self.node.vhosts.get(name)
        if vhost is None:
            raise ApiError(404, "not_found", "vhost_not_found")
        permissions = self.node.authority.permissions.get((user.name, name))
        if permissions is None:
            raise NotAuthorised(NO_VHOST_ACCESS, challenge=False)
        return vhost, permissions

    def scoped(self, request: Request, user: User) -> list[VirtualHost]:
        """The vhost named in the path, or every vhost the user may see."""
        return [self.vhost(request, user)] if "vhost" in request.path_params else self.vhosts(user)

    def sessions(self, user: User) -> list[Any]:
        sessions = sorted(self.node.connections, key=show.connection_name)
        return sessions if self.sees_all(user) else [s for s in sessions if s.username == user.name]
