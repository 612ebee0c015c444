"""Vhosts, users, permissions and vhost limits over HTTP, as RabbitMQ's API serves them. Only an
administrator changes any of them, or lists users and permissions; limits are readable per visible vhost.

The changes go through the node's Administration (broker/admin.py), which keeps them across restarts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from leveret.broker.admin import AdminError
from leveret.broker.management import serializers as show
from leveret.broker.management.amqp_errors import admin_error
from leveret.broker.management.auth import require_administrator
from leveret.broker.management.bodies import boolean, json_object, require, text
from leveret.broker.management.context import Context, NotFound, bad_request, param
from leveret.broker.management.through_cluster import through_admin
from leveret.broker.management.writes import made, no_content
from leveret.config import User, hash_password
from leveret.config.passwords import SHA256

T = TypeVar("T")


def parse_tags(value: Any) -> tuple[str, ...]:
    """RabbitMQ takes tags as "a,b" or as a list."""
    if isinstance(value, str):
        items = value.split(",")
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        items = value
    else:
        raise bad_request(["invalid_tags", value])
    return tuple(tag.strip() for tag in items if tag.strip())


def permission_json(user: str, vhost: str, node_permissions: Any) -> dict[str, str]:
    return {
        "user": user,
        "vhost": vhost,
        "configure": node_permissions.configure.pattern,
        "write": node_permissions.write.pattern,
        "read": node_permissions.read.pattern,
    }


class Access(Context):
    async def changed(self, operation: Callable[[], T]) -> T:
        """A change, made cluster-wide in a cluster (see through_admin)."""
        return await through_admin(self.node, operation)

    def admin(self, request: Request) -> User:
        user = self.user(request)
        require_administrator(user)
        return user

    # ---- vhosts -----------------------------------------------------------------------------------

    async def put_vhost(self, request: Request) -> Response:
        user = self.admin(request)
        body = await json_object(request)
        boolean(body, "tracing", False)  # accepted, as RabbitMQ does; Leveret does not trace
        description = text(body, "description") if "description" in body else None
        tags = parse_tags(body["tags"]) if "tags" in body else None
        name = param(request, "vhost")
        return made(await self.changed(lambda: self.node.admin.put_vhost(name, user.name, description, tags)))

    async def delete_vhost(self, request: Request) -> Response:
        self.admin(request)
        if not await self.changed(lambda: self.node.admin.delete_vhost(param(request, "vhost"))):
            raise NotFound
        return no_content()

    # ---- users ------------------------------------------------------------------------------------

    async def get_user(self, request: Request) -> Response:
        self.admin(request)
        found = self.node.authority.users.get(param(request, "name"))
        if found is None:
            raise NotFound
        return JSONResponse(show.user(found, self.node.admin.user_limits.get(found.name)))

    async def put_user(self, request: Request) -> Response:
        self.admin(request)
        body = await json_object(request)
        name = param(request, "name")
        if "tags" not in body:
            raise bad_request("tags_not_present")
        tags = parse_tags(body["tags"])
        existing = self.node.authority.users.get(name)
        algorithm = SHA256
        if "password" in body:
            password_hash = hash_password(text(body, "password"))
        elif "password_hash" in body:
            password_hash = text(body, "password_hash")
            algorithm = text(body, "hashing_algorithm", SHA256)
        elif existing is not None:
            password_hash, algorithm = existing.password_hash, existing.hashing_algorithm
        else:
            password_hash = ""  # no password: the user cannot log in with one
        try:
            created = await self.changed(
                lambda: self.node.admin.put_user(name, password_hash, tags, algorithm)
            )
        except AdminError as error:
            raise admin_error(error) from None
        return made(created)

    async def delete_user(self, request: Request) -> Response:
        self.admin(request)
        if not await self.changed(lambda: self.node.admin.delete_user(param(request, "name"))):
            raise NotFound
        return no_content()

    # ---- permissions ------------------------------------------------------------------------------

    def _permissions(self, keep: Any = lambda user, vhost: True) -> list[dict[str, str]]:
        return [
            permission_json(user, vhost, p)
            for (user, vhost), p in sorted(self.node.authority.permissions.items())
            if keep(user, vhost)
        ]

    async def permissions(self, request: Request) -> Response:
        self.admin(request)
        return JSONResponse(self._permissions())

    async def vhost_permissions(self, request: Request) -> Response:
        self.admin(request)
        name = param(request, "vhost")
        if name not in self.node.vhosts:
            raise NotFound
        return JSONResponse(self._permissions(lambda user, vhost: vhost == name))

    async def user_permissions(self, request: Request) -> Response:
        self.admin(request)
        name = param(request, "name")
        if name not in self.node.authority.users:
            raise NotFound
        return JSONResponse(self._permissions(lambda user, vhost: user == name))

    async def permission(self, request: Request) -> Response:
        self.admin(request)
        key = (param(request, "user"), param(request, "vhost"))
        found = self.node.authority.permissions.get(key)
        if found is None:
            raise NotFound
        return JSONResponse(permission_json(key[0], key[1], found))

    async def put_permission(self, request: Request) -> Response:
        self.admin(request)
        body = await json_object(request)
        require(body, "configure", "write", "read")
        patterns = (text(body, "configure"), text(body, "write"), text(body, "read"))
        try:
            user, vhost = param(request, "user"), param(request, "vhost")
            created = await self.changed(lambda: self.node.admin.set_permissions(user, vhost, *patterns))
        except AdminError as error:
            raise admin_error(error) from None
        return made(created)

    async def delete_permission(self, request: Request) -> Response:
        self.admin(request)
        if not await self.changed(
            lambda: self.node.admin.clear_permissions(param(request, "user"), param(request, "vhost"))
        ):
            raise NotFound
        return no_content()

    # ---- topic permissions ----------------------------------------------------------------------

    def _topics(self, keep: Any = lambda user, vhost: True) -> list[dict[str, str]]:
        return [
            {"user": t.user, "vhost": t.vhost, "exchange": t.exchange, "write": t.write, "read": t.read}
            for t in sorted(
                self.node.authority.topic_permissions, key=lambda t: (t.user, t.vhost, t.exchange)
            )
            if keep(t.user, t.vhost)
        ]

    async def topic_permissions(self, request: Request) -> Response:
        self.admin(request)
        if "user" in request.path_params:
            user, vhost = param(request, "user"), param(request, "vhost")
            found = self._topics(lambda u, v: (u, v) == (user, vhost))
            if not found:
                raise NotFound
            return JSONResponse(found)
        if "vhost" in request.path_params:
            vhost = param(request, "vhost")
            if vhost not in self.node.vhosts:
                raise NotFound
            return JSONResponse(self._topics(lambda u, v: v == vhost))
        if "name" in request.path_params:
            user = param(request, "name")
            if user not in self.node.authority.users:
                raise NotFound
            return JSONResponse(self._topics(lambda u, v: u == user))
        return JSONResponse(self._topics())

    async def put_topic_permission(self, request: Request) -> Response:
        self.admin(request)
        body = await json_object(request)
        require(body, "exchange", "write", "read")
        fields = (text(body, "exchange"), text(body, "write"), text(body, "read"))
        try:
            user, vhost = param(request, "user"), param(request, "vhost")
            created = await self.changed(lambda: self.node.admin.set_topic_permission(user, vhost, *fields))
        except AdminError as error:
            raise admin_error(error) from None
        return made(created)

    async def delete_topic_permission(self, request: Request) -> Response:
        self.admin(request)
        if not await self.changed(
            lambda: self.node.admin.clear_topic_permissions(param(request, "user"), param(request, "vhost"))
        ):
            raise NotFound
        return no_content()

    # ---- vhost limits -----------------------------------------------------------------------------

    async def vhost_limits(self, request: Request) -> Response:
        vhosts = self.scoped(request, self.user(request))
        return JSONResponse([{"vhost": v.name, "value": dict(v.limits)} for v in vhosts if v.limits])

    # ---- user limits ------------------------------------------------------------------------------

    async def user_limits(self, request: Request) -> Response:
        """Any management user reads them, as in RabbitMQ; only an administrator changes them."""
        self.user(request)
        limits = self.node.admin.user_limits
        if "user" in request.path_params:
            name = param(request, "user")
            if name not in self.node.authority.users:
                raise NotFound
            names = [name] if name in limits else []
        else:
            names = sorted(limits)
        return JSONResponse([{"user": name, "value": dict(limits[name])} for name in names])

    async def put_user_limit(self, request: Request) -> Response:
        self.admin(request)
        body = await json_object(request)
        require(body, "value")
        try:
            user, name = param(request, "user"), param(request, "name")
            await self.changed(lambda: self.node.admin.set_user_limit(user, name, body["value"]))
        except AdminError as error:
            raise admin_error(error) from None
        return no_content()

    async def delete_user_limit(self, request: Request) -> Response:
        self.admin(request)
        user = param(request, "user")
        if user not in self.node.authority.users:
            raise admin_error(AdminError(["no_such_user", user]))
        await self.changed(lambda: self.node.admin.clear_user_limit(user, param(request, "name")))
        return no_content()

    async def parameters(self, request: Request) -> Response:
        """Runtime parameters: Leveret's only ones are vhost limits, RabbitMQ's component vhost-limits."""
        vhosts = self.vhosts(self.user(request))
        return JSONResponse(
            [
                {"value": dict(v.limits), "vhost": v.name, "component": "vhost-limits", "name": "limits"}
                for v in vhosts
                if v.limits
            ]
        )

    async def put_vhost_limit(self, request: Request) -> Response:
        self.admin(request)
        body = await json_object(request)
        require(body, "value")
        try:
            vhost, name = param(request, "vhost"), param(request, "name")
            await self.changed(lambda: self.node.admin.set_vhost_limit(vhost, name, body["value"]))
        except AdminError as error:
            raise admin_error(error) from None
        return no_content()

    async def delete_vhost_limit(self, request: Request) -> Response:
        self.admin(request)
        try:
            await self.changed(
                lambda: self.node.admin.clear_vhost_limit(param(request, "vhost"), param(request, "name"))
            )
        except AdminError as error:
            raise admin_error(error) from None
        return no_content()
