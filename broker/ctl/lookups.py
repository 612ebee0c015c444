"""Telling "no such object" from "no such endpoint" when the management API answers 404.

RabbitMQ's API answers 404 both for a missing object and for a path it does not serve; a broker whose API
lacks an endpoint (Leveret before its write endpoints) must not be reported as missing the user or queue.
So before a 404 is reported as a missing object, the object is looked up through an endpoint every broker
serves (the collections); if it is there, the endpoint is what is missing.
"""

from __future__ import annotations

from typing import Any

from .client import api_path
from .context import Context
from .errors import EX_NOUSER, EX_UNAVAILABLE, ApiError, CtlError, Unsupported

NOT_SERVED = (404, 405)


def no_user(name: str) -> CtlError:
    return CtlError(f'user "{name}" does not exist', EX_NOUSER)


def no_vhost(name: str) -> CtlError:
    return CtlError(f"virtual host '{name}' does not exist", EX_UNAVAILABLE)


def no_queue(name: str, vhost: str) -> CtlError:
    return CtlError(f"queue '{name}' in vhost '{vhost}' does not exist", EX_UNAVAILABLE)


def _names(ctx: Context, *collection: str) -> set[str]:
    return {item.get("name") for item in ctx.client.get(api_path(*collection)) or []}


def user_exists(ctx: Context, name: str) -> bool:
    return name in _names(ctx, "users")


def vhost_exists(ctx: Context, name: str) -> bool:
    try:
        ctx.client.get(api_path("vhosts", name))
    except ApiError as error:
        if error.status == 404:
            return False
        raise
    return True


def queue_exists(ctx: Context, vhost: str, name: str) -> bool:
    try:
        ctx.client.get(api_path("queues", vhost, name))
    except ApiError as error:
        if error.status == 404:
            return False
        raise
    return True


def connection_exists(ctx: Context, name: str) -> bool:
    return name in _names(ctx, "connections")


def permissions_served(ctx: Context) -> bool:
    try:
        ctx.client.get(api_path("permissions"))
    except ApiError as error:
        if error.status in NOT_SERVED:
            return False
        raise
    return True


def explain(error: ApiError, exists: bool, missing: CtlError) -> CtlError:
    """The error to report for a 404 or 405 answer about an object that `exists` (or not)."""
    if error.status == 405 or exists:
        return Unsupported(error)
    return missing


def user(ctx: Context, name: str) -> dict[str, Any]:
    try:
        found: dict[str, Any] = ctx.client.get(api_path("users", name))
    except ApiError as error:
        if error.status in NOT_SERVED:
            raise explain(error, user_exists(ctx, name), no_user(name)) from None
        raise
    return found


def require_user_and_vhost(ctx: Context, error: ApiError, username: str, vhost: str) -> None:
    """After a refused request about a user in a vhost: report the one that is missing, if one is."""
    if not user_exists(ctx, username):
        raise no_user(username) from error
    if not vhost_exists(ctx, vhost):
        raise no_vhost(vhost) from error
