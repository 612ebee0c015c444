"""set_policy, clear_policy, list_policies: /api/policies/{vhost}/{name}.

A broker whose API has no policies (or lists them but cannot set them) answers 404 or 405; lookups tells that
apart from a missing vhost or policy.
"""

from __future__ import annotations

import argparse
import json

from . import columns as cols
from . import lookups
from .client import api_path
from .context import Context, Verb
from .errors import EX_DATAERR, EX_UNAVAILABLE, ApiError, CtlError
from .listing import add_columns, selected, show

APPLY_TO = ("all", "queues", "exchanges", "classic_queues", "quorum_queues", "streams")
DEFAULT_COLUMNS = ("vhost", "name", "pattern", "apply-to", "definition", "priority")


def _policy_may_exist(ctx: Context, name: str) -> bool:
    """Whether the vhost's policies list `name`, or cannot be listed at all (then no policy endpoint is)."""
    try:
        policies = ctx.client.get(api_path("policies", ctx.vhost)) or []
    except ApiError as error:
        if error.status in lookups.NOT_SERVED:
            return True
        raise
    return any(policy.get("name") == name for policy in policies)


def _explain_vhost(ctx: Context, error: ApiError) -> CtlError:
    """A 404 about the vhost's policies: the vhost is missing, or (it exists) the endpoint is."""
    return lookups.explain(error, lookups.vhost_exists(ctx, ctx.vhost), lookups.no_vhost(ctx.vhost))


def set_policy(ctx: Context, args: argparse.Namespace) -> None:
    ctx.say(
        f'Setting policy "{args.name}" for pattern "{args.pattern}" to "{args.definition}" with priority '
        f'"{args.priority}" for vhost "{ctx.vhost}" ...'
    )
    try:
        definition = json.loads(args.definition)
    except ValueError as error:
        raise CtlError(f"the policy definition is not valid JSON: {error}", EX_DATAERR) from None
    if not isinstance(definition, dict):
        raise CtlError('the policy definition must be a JSON object, such as {"max-length": 10}', EX_DATAERR)
    body = {
        "pattern": args.pattern,
        "definition": definition,
        "priority": args.priority,
        "apply-to": args.apply_to,
    }
    try:
        ctx.client.put(api_path("policies", ctx.vhost, args.name), body)
    except ApiError as error:
        if error.status in lookups.NOT_SERVED:
            raise _explain_vhost(ctx, error) from None
        raise


def clear_policy(ctx: Context, args: argparse.Namespace) -> None:
    ctx.say(f'Clearing policy "{args.name}" on vhost "{ctx.vhost}" ...')
    try:
        ctx.client.delete(api_path("policies", ctx.vhost, args.name))
    except ApiError as error:
        if error.status not in lookups.NOT_SERVED:
            raise
        if error.status == 405 or not lookups.vhost_exists(ctx, ctx.vhost):
            raise _explain_vhost(ctx, error) from None
        missing = CtlError(f"policy '{args.name}' does not exist in vhost '{ctx.vhost}'", EX_UNAVAILABLE)
        raise lookups.explain(error, _policy_may_exist(ctx, args.name), missing) from None


def list_policies(ctx: Context, args: argparse.Namespace) -> None:
    names = selected("list_policies", args.columns, cols.POLICIES, DEFAULT_COLUMNS)
    try:
        policies = ctx.client.get(api_path("policies", ctx.vhost))
    except ApiError as error:
        if error.status in lookups.NOT_SERVED:
            raise _explain_vhost(ctx, error) from None
        raise
    show(ctx, names, cols.POLICIES, policies, [f'Listing policies for vhost "{ctx.vhost}" ...'])


def _set_policy(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name")
    parser.add_argument("pattern", help="regular expression of the queue or exchange names it applies to")
    parser.add_argument("definition", help="JSON object of policy keys, e.g. '{\"max-length\": 10}'")
    parser.add_argument("--priority", type=int, default=0, help="the highest applies (default: 0)")
    parser.add_argument("--apply-to", choices=APPLY_TO, default="all", help="(default: all)")


def _clear_policy(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name")


VERBS = [
    Verb("set_policy", "Set a policy in a vhost (-p).", _set_policy, set_policy),
    Verb("clear_policy", "Remove a policy from a vhost (-p).", _clear_policy, clear_policy),
    Verb(
        "list_policies",
        "List the policies of a vhost (-p).",
        lambda parser: add_columns(parser, cols.POLICIES, DEFAULT_COLUMNS),
        list_policies,
    ),
]
