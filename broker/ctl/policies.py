"""set_policy, clear_policy, list_policies (/api/policies/{vhost}/{name}) and their operator policy
counterparts (/api/operator-policies/...), with rabbitmqctl's banners.

A broker whose API has no policies (or lists them but cannot set them) answers 404 or 405; lookups tells that
apart from a missing vhost or policy.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass

from . import columns as cols
from . import lookups
from .client import api_path
from .context import Context, Verb
from .errors import EX_DATAERR, EX_UNAVAILABLE, ApiError, CtlError
from .listing import add_columns, selected, show

APPLY_TO = ("all", "queues", "exchanges", "classic_queues", "quorum_queues", "streams")
DEFAULT_COLUMNS = ("vhost", "name", "pattern", "apply-to", "definition", "priority")


@dataclass(frozen=True)
class Kind:
    """Policies or operator policies: their endpoint and how rabbitmqctl names them."""

    endpoint: str
    setting: str  # "policy", "operator policy override"
    clearing: str
    listing: str


POLICY = Kind("policies", "policy", "policy", "policies")
OPERATOR = Kind(
    "operator-policies", "operator policy override", "operator policy", "operator policy overrides"
)


def _policy_may_exist(ctx: Context, kind: Kind, name: str) -> bool:
    """Whether the vhost's policies list `name`, or cannot be listed at all (then no policy endpoint is)."""
    try:
        policies = ctx.client.get(api_path(kind.endpoint, ctx.vhost)) or []
    except ApiError as error:
        if error.status in lookups.NOT_SERVED:
            return True
        raise
    return any(policy.get("name") == name for policy in policies)


def _explain_vhost(ctx: Context, error: ApiError) -> CtlError:
    """A 404 about the vhost's policies: the vhost is missing, or (it exists) the endpoint is."""
    return lookups.explain(error, lookups.vhost_exists(ctx, ctx.vhost), lookups.no_vhost(ctx.vhost))


def _set(kind: Kind) -> Callable[[Context, argparse.Namespace], None]:
    def set_policy(ctx: Context, args: argparse.Namespace) -> None:
        ctx.say(
            f'Setting {kind.setting} "{args.name}" for pattern "{args.pattern}" to "{args.definition}" with '
            f'priority "{args.priority}" for vhost "{ctx.vhost}" ...'
        )
        try:
            definition = json.loads(args.definition)
        except ValueError as error:
            raise CtlError(f"the policy definition is not valid JSON: {error}", EX_DATAERR) from None
        if not isinstance(definition, dict):
            raise CtlError(
                'the policy definition must be a JSON object, such as {"max-length": 10}', EX_DATAERR
            )
        body = {
            "pattern": args.pattern,
            "definition": definition,
            "priority": args.priority,
            "apply-to": args.apply_to,
        }
        try:
            ctx.client.put(api_path(kind.endpoint, ctx.vhost, args.name), body)
        except ApiError as error:
            if error.status in lookups.NOT_SERVED:
                raise _explain_vhost(ctx, error) from None
            raise

    return set_policy


def _clear(kind: Kind) -> Callable[[Context, argparse.Namespace], None]:
    def clear_policy(ctx: Context, args: argparse.Namespace) -> None:
        ctx.say(f'Clearing {kind.clearing} "{args.name}" on vhost "{ctx.vhost}" ...')
        try:
            ctx.client.delete(api_path(kind.endpoint, ctx.vhost, args.name))
        except ApiError as error:
            if error.status not in lookups.NOT_SERVED:
                raise
            if error.status == 405 or not lookups.vhost_exists(ctx, ctx.vhost):
                raise _explain_vhost(ctx, error) from None
            missing = CtlError(f"policy '{args.name}' does not exist in vhost '{ctx.vhost}'", EX_UNAVAILABLE)
            raise lookups.explain(error, _policy_may_exist(ctx, kind, args.name), missing) from None

    return clear_policy


def _list(kind: Kind, verb: str) -> Callable[[Context, argparse.Namespace], None]:
    def list_policies(ctx: Context, args: argparse.Namespace) -> None:
        names = selected(verb, args.columns, cols.POLICIES, DEFAULT_COLUMNS)
        try:
            policies = ctx.client.get(api_path(kind.endpoint, ctx.vhost))
        except ApiError as error:
            if error.status in lookups.NOT_SERVED:
                raise _explain_vhost(ctx, error) from None
            raise
        show(ctx, names, cols.POLICIES, policies, [f'Listing {kind.listing} for vhost "{ctx.vhost}" ...'])

    return list_policies


def _set_policy(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name")
    parser.add_argument("pattern", help="regular expression of the queue or exchange names it applies to")
    parser.add_argument("definition", help="JSON object of policy keys, e.g. '{\"max-length\": 10}'")
    parser.add_argument("--priority", type=int, default=0, help="the highest applies (default: 0)")
    parser.add_argument("--apply-to", choices=APPLY_TO, default="all", help="(default: all)")


def _clear_policy(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name")


def _add_columns(parser: argparse.ArgumentParser) -> None:
    add_columns(parser, cols.POLICIES, DEFAULT_COLUMNS)


VERBS = [
    Verb("set_policy", "Set a policy in a vhost (-p).", _set_policy, _set(POLICY)),
    Verb("clear_policy", "Remove a policy from a vhost (-p).", _clear_policy, _clear(POLICY)),
    Verb("list_policies", "List the policies of a vhost (-p).", _add_columns, _list(POLICY, "list_policies")),
    Verb(
        "set_operator_policy",
        "Set an operator policy in a vhost (-p): its limits win where lower than a policy's.",
        _set_policy,
        _set(OPERATOR),
    ),
    Verb(
        "clear_operator_policy",
        "Remove an operator policy from a vhost (-p).",
        _clear_policy,
        _clear(OPERATOR),
    ),
    Verb(
        "list_operator_policies",
        "List the operator policies of a vhost (-p).",
        _add_columns,
        _list(OPERATOR, "list_operator_policies"),
    ),
]
