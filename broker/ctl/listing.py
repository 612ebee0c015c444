"""The list_* verbs: GET a collection, keep the columns asked for (rabbitmqctl's names), print them."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from . import columns as cols
from . import lookups
from .client import api_path
from .context import Context, Verb
from .errors import ApiError, CtlError, UsageError
from .output import write_json, write_table


def add_columns(parser: argparse.ArgumentParser, columns: cols.Columns, default: Sequence[str]) -> None:
    parser.add_argument(
        "columns",
        nargs="*",
        metavar="column",
        help=f"columns to show, by space or comma (default: {' '.join(default)}); "
        f"one of: {', '.join(sorted(columns))}",
    )


def selected(verb: str, asked: Sequence[str], columns: cols.Columns, default: Sequence[str]) -> list[str]:
    names = [name for item in asked for name in item.split(",") if name] or list(default)
    unknown = [name for name in names if name not in columns]
    if unknown:
        raise UsageError(
            f"{verb}: info key(s) {', '.join(unknown)} are not supported; "
            f"one of: {', '.join(sorted(columns))}"
        )
    return names


def show(
    ctx: Context, names: Sequence[str], columns: cols.Columns, items: Any, preamble: Sequence[str]
) -> None:
    rows = [{name: columns[name](item) for name in names} for item in items or []]
    if ctx.formatter == "json":
        write_json(ctx.out, names, rows)
        return
    for line in preamble:
        ctx.say(line)
    write_table(ctx.out, names, rows, headers=ctx.headers)


# What a 404 means when the path names an object: that object is missing, or the endpoint is.
Missing = Callable[[Context, argparse.Namespace, ApiError], CtlError]


def no_vhost(ctx: Context, args: argparse.Namespace, error: ApiError) -> CtlError:
    return lookups.explain(error, lookups.vhost_exists(ctx, ctx.vhost), lookups.no_vhost(ctx.vhost))


def no_user(ctx: Context, args: argparse.Namespace, error: ApiError) -> CtlError:
    return lookups.explain(error, lookups.user_exists(ctx, args.user), lookups.no_user(args.user))


@dataclass(frozen=True)
class Listing:
    verb: str
    summary: str
    columns: cols.Columns
    default: tuple[str, ...]
    # The collection's path and the informational lines before the table, given the context.
    path: Callable[[Context, argparse.Namespace], str]
    preamble: Callable[[Context, argparse.Namespace], list[str]]
    missing: Missing | None = None  # None: report the API's answer as it is
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None

    def as_verb(self) -> Verb:
        def arguments(parser: argparse.ArgumentParser) -> None:
            if self.add_arguments is not None:
                self.add_arguments(parser)
            add_columns(parser, self.columns, self.default)

        def run(ctx: Context, args: argparse.Namespace) -> None:
            names = selected(self.verb, args.columns, self.columns, self.default)
            path = self.path(ctx, args)
            try:
                items = ctx.client.get(path)
            except ApiError as error:
                if error.status in lookups.NOT_SERVED and self.missing is not None:
                    raise self.missing(ctx, args, error) from None
                raise
            show(ctx, names, self.columns, items, self.preamble(ctx, args))

        return Verb(self.verb, self.summary, arguments, run)


def _in_vhost(collection: str) -> Callable[[Context, argparse.Namespace], str]:
    return lambda ctx, args: api_path(collection, ctx.vhost)


def _everywhere(collection: str) -> Callable[[Context, argparse.Namespace], str]:
    return lambda ctx, args: api_path(collection)


def _user_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("user", metavar="username", help="the user whose permissions to list")


LISTINGS = (
    Listing(
        "list_queues",
        "List the queues of a vhost (-p) and their properties.",
        cols.QUEUES,
        ("name", "messages"),
        _in_vhost("queues"),
        lambda ctx, args: [
            f"Timeout: {ctx.timeout:.1f} seconds ...",
            f"Listing queues for vhost {ctx.vhost} ...",
        ],
        missing=no_vhost,
    ),
    Listing(
        "list_exchanges",
        "List the exchanges of a vhost.",
        cols.EXCHANGES,
        ("name", "type"),
        _in_vhost("exchanges"),
        lambda ctx, args: [f"Listing exchanges for vhost {ctx.vhost} ..."],
        missing=no_vhost,
    ),
    Listing(
        "list_bindings",
        "List the bindings of a vhost.",
        cols.BINDINGS,
        ("source_name", "source_kind", "destination_name", "destination_kind", "routing_key", "arguments"),
        _in_vhost("bindings"),
        lambda ctx, args: [f"Listing bindings for vhost {ctx.vhost}..."],
        missing=no_vhost,
    ),
    Listing(
        "list_connections",
        "List the AMQP connections.",
        cols.CONNECTIONS,
        ("user", "peer_host", "peer_port", "state"),
        _everywhere("connections"),
        lambda ctx, args: ["Listing connections ..."],
    ),
    Listing(
        "list_channels",
        "List the channels.",
        cols.CHANNELS,
        ("pid", "user", "consumer_count", "messages_unacknowledged"),
        _everywhere("channels"),
        lambda ctx, args: ["Listing channels ..."],
    ),
    Listing(
        "list_consumers",
        "List the consumers of a vhost.",
        cols.CONSUMERS,
        (
            "queue_name",
            "channel_pid",
            "consumer_tag",
            "ack_required",
            "prefetch_count",
            "active",
            "arguments",
        ),
        _in_vhost("consumers"),
        lambda ctx, args: [f"Listing consumers in vhost {ctx.vhost} ..."],
        missing=no_vhost,
    ),
    Listing(
        "list_users",
        "List the users and their tags.",
        cols.USERS,
        ("user", "tags"),
        _everywhere("users"),
        lambda ctx, args: ["Listing users ..."],
    ),
    Listing(
        "list_vhosts",
        "List the virtual hosts.",
        cols.VHOSTS,
        ("name",),
        _everywhere("vhosts"),
        lambda ctx, args: ["Listing vhosts ..."],
    ),
    Listing(
        "list_permissions",
        "List the users' permissions in a vhost.",
        cols.PERMISSIONS,
        ("user", "configure", "write", "read"),
        lambda ctx, args: api_path("vhosts", ctx.vhost, "permissions"),
        lambda ctx, args: [f'Listing permissions for vhost "{ctx.vhost}" ...'],
        missing=no_vhost,
    ),
    Listing(
        "list_user_permissions",
        "List a user's permissions in every vhost.",
        cols.USER_PERMISSIONS,
        ("vhost", "configure", "write", "read"),
        lambda ctx, args: api_path("users", args.user, "permissions"),
        lambda ctx, args: [f'Listing permissions for user "{args.user}" ...'],
        missing=no_user,
        add_arguments=_user_argument,
    ),
)

VERBS = [listing.as_verb() for listing in LISTINGS]
