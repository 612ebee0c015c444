"""/api/definitions: the node's (or one vhost's) definitions in RabbitMQ's JSON format, exported and
imported by administrators (broker/definitions.py does the work)."""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from leveret.amqp.errors import AMQPError
from leveret.broker import definitions
from leveret.broker.admin import AdminError
from leveret.broker.management.amqp_errors import admin_error
from leveret.broker.management.auth import require_administrator
from leveret.broker.management.bodies import read_body
from leveret.broker.management.context import Context, NotFound, bad_request, param
from leveret.broker.management.through_cluster import through_admin, through_cluster
from leveret.broker.management.writes import no_content
from leveret.broker.node import ADVERTISED_VERSION


class Definitions(Context):
    async def export(self, request: Request) -> Response:
        require_administrator(self.user(request))
        if "vhost" in request.path_params:
            vhost = self.node.vhosts.get(param(request, "vhost"))
            if vhost is None:
                raise NotFound
            return JSONResponse(definitions.export_vhost(vhost, ADVERTISED_VERSION))
        return JSONResponse(definitions.export_node(self.node, ADVERTISED_VERSION))

    async def import_(self, request: Request) -> Response:
        require_administrator(self.user(request))
        only_vhost = None
        if "vhost" in request.path_params:
            only_vhost = param(request, "vhost")
            if only_vhost not in self.node.vhosts:
                raise NotFound
        try:
            document = json.loads(await read_body(request))
        except (ValueError, RecursionError):
            raise bad_request("failed_to_parse_json") from None
        try:
            await through_admin(self.node, lambda: definitions.import_access(self.node, document, only_vhost))
            for declaration in definitions.declarations(self.node, document, only_vhost):
                await through_cluster(self.node, declaration)
        except AdminError as error:
            raise admin_error(error) from None
        except AMQPError as error:
            raise bad_request(error.text) from None
        return no_content()
