"""set_user_limits, clear_user_limits, list_user_limits: /api/user-limits/{user}/{name}, with rabbitmqctl's
banners and its output (the user's limits as one compact JSON object)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from . import lookups
from .client import api_path
from .context import Context, Verb
from .errors import EX_DATAERR, ApiError, CtlError, Unsupported

USER_LIMITS = ("max-connections", "max-channels")


def _refused(ctx: Context, error: ApiError, user: str) -> CtlError:
    """A refusal explained: the user is missing, the endpoint is not served, or the API's own reason."""
    if not lookups.user_exists(ctx, user):
        return lookups.no_user(user)
    if error.status in lookups.NOT_SERVED:
        return Unsupported(error)
    return error


def set_user_limits(ctx: Context, args: argparse.Namespace) -> None:
    ctx.say(f'Setting user limits to "{args.definition}" for user "{args.user}" ...')
    try:
        limits = json.loads(args.definition)
    except ValueError as error:
        raise CtlError(f"the limit definition is not valid JSON: {error}", EX_DATAERR) from None
    if not isinstance(limits, dict):
        raise CtlError(
            'the limit definition must be a JSON object, such as {"max-connections": 10}', EX_DATAERR
        )
    for name, value in limits.items():
        try:
            ctx.client.put(api_path("user-limits", args.user, name), {"value": value})
        except ApiError as error:
            raise _refused(ctx, error, args.user) from None


def clear_user_limits(ctx: Context, args: argparse.Namespace) -> None:
    if args.limit == "all":
        ctx.say(f'Clearing all limits for user "{args.user}" ...')
        names: tuple[str, ...] = USER_LIMITS
    else:
        ctx.say(f'Clearing "{args.limit}" limit for user "{args.user}" ...')
        names = (args.limit,)
    for name in names:
        try:
            ctx.client.delete(api_path("user-limits", args.user, name))
        except ApiError as error:
            raise _refused(ctx, error, args.user) from None


def list_user_limits(ctx: Context, args: argparse.Namespace) -> None:
    as_json = ctx.formatter == "json"  # rabbitmqctl's: {"message": "<the limits>"}, without the banner
    if not as_json:
        ctx.say(f'Listing limits for user "{args.user}" ...')
    try:
        listed: Any = ctx.client.get(api_path("user-limits", args.user)) or []
    except ApiError as error:
        raise _refused(ctx, error, args.user) from None
    limits = listed[0].get("value", {}) if listed else {}
    text = json.dumps(limits, sort_keys=True, separators=(",", ":"))
    ctx.out.write((json.dumps({"message": text}) if as_json else text) + "\n")


def _set(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("user")
    parser.add_argument("definition", help="JSON object of limits, e.g. '{\"max-connections\": 10}'")


def _clear(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("user")
    parser.add_argument("limit", choices=(*USER_LIMITS, "all"))


def _list(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--user", default="guest", help="(default: guest)")


VERBS = [
    Verb("set_user_limits", "Set a user's max-connections and max-channels.", _set, set_user_limits),
    Verb("clear_user_limits", "Remove one of a user's limits, or all.", _clear, clear_user_limits),
    Verb("list_user_limits", "Show a user's limits.", _list, list_user_limits),
]
