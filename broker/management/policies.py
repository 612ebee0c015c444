"""/api/policies and /api/operator-policies, as RabbitMQ 3.10's API serves them.

Any management user lists the policies of the vhosts it has permissions in; reading one policy, setting and
clearing need the policymaker or administrator tag (an operator policy: administrator), and access to the
vhost. Changes go through the node's Administration (broker/admin.py): they apply at once and are kept.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from leveret.broker.admin import AdminError
from leveret.broker.management.amqp_errors import admin_error
from leveret.broker.management.auth import NotAuthorised, require_administrator
from leveret.broker.management.bodies import json_object, require
from leveret.broker.management.context import NO_VHOST_ACCESS, ApiError, Context, NotFound, param
from leveret.broker.management.through_cluster import through_admin
from leveret.broker.management.writes import made, no_content
from leveret.broker.node import Node
from leveret.broker.policies import Policy
from leveret.broker.vhost import VirtualHost
from leveret.config import User

POLICY_TAGS = frozenset({"policymaker", "administrator"})
NOT_AUTHORISED = {"error": "not_authorised", "reason": "User not authorised to access object"}


class Policies(Context):
    def __init__(self, node: Node, *, operator: bool) -> None:
        super().__init__(node)
        self.operator = operator

    def _visible(self, user: User) -> list[VirtualHost]:
        permitted = self.node.authority.permissions
        return [v for name, v in sorted(self.node.vhosts.items()) if (user.name, name) in permitted]

    def _policies(self, vhost: VirtualHost) -> list[Policy]:
        return [p for _, p in sorted(vhost.policies.of_kind(self.operator).items())]

    def _may_change(self, request: Request) -> VirtualHost:
        """The path's vhost, for a user allowed to read and change its policies one by one."""
        user = self.user(request)
        if self.operator:
            require_administrator(user)
        elif not POLICY_TAGS.intersection(user.tags):
            raise NotAuthorised(NOT_AUTHORISED, challenge=False)
        vhost = self.node.vhosts.get(param(request, "vhost"))
        if vhost is None:
            raise NotFound
        if vhost not in self._visible(user):
            raise NotAuthorised(NO_VHOST_ACCESS, challenge=False)
        return vhost

    async def listing(self, request: Request) -> Response:
        user = self.user(request)
        if "vhost" in request.path_params:
            vhost = self.node.vhosts.get(param(request, "vhost"))
            if vhost is None:
                raise NotFound
            if vhost not in self._visible(user):
                raise NotAuthorised(NO_VHOST_ACCESS, challenge=False)
            vhosts = [vhost]
        else:
            vhosts = self._visible(user)
        return JSONResponse([p.record() for v in vhosts for p in self._policies(v)])

    async def one(self, request: Request) -> Response:
        vhost = self._may_change(request)
        found = vhost.policies.of_kind(self.operator).get(param(request, "name"))
        if found is None:
            raise NotFound
        return JSONResponse(found.record())

    async def put(self, request: Request) -> Response:
        vhost = self._may_change_or_missing_vhost(request)
        body = await json_object(request)
        require(body, "pattern", "definition")
        try:
            name, operator = param(request, "name"), self.operator
            created = await through_admin(
                self.node, lambda: self.node.admin.set_policy(vhost, name, body, operator=operator)
            )
        except AdminError as error:
            raise admin_error(error) from None
        return made(created)

    def _may_change_or_missing_vhost(self, request: Request) -> str:
        """A PUT to a vhost that does not exist answers 404 not_found/vhost_not_found, as RabbitMQ's."""
        if param(request, "vhost") not in self.node.vhosts:
            self.user(request)
            raise ApiError(404, "not_found", "vhost_not_found")
        return self._may_change(request).name

    async def delete(self, request: Request) -> Response:
        vhost = self._may_change(request)
        name, operator = param(request, "name"), self.operator
        if not await through_admin(
            self.node, lambda: self.node.admin.clear_policy(vhost.name, name, operator=operator)
        ):
            raise NotFound
        return no_content()
