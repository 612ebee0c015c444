"""The verbs that change things: users, vhosts, permissions, queues, definitions, connections.

Each is one or two requests of RabbitMQ's management API. Before reporting an error, a refused request is
explained where the API's answer is terse: which of the user, the vhost or the queue does not exist.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from . import lookups
from .client import api_path
from .context import Context, Verb
from .errors import EX_DATAERR, EX_UNAVAILABLE, ApiError, CtlError, Unsupported
from .lookups import NOT_SERVED, explain


def _tags_text(tags: Any) -> str:
    return tags if isinstance(tags, str) else ",".join(tags or [])


def _put(ctx: Context, path: str, body: Any) -> None:
    """A PUT that creates or replaces: a 404 or 405 can only mean the endpoint is not served."""
    try:
        ctx.client.put(path, body)
    except ApiError as error:
        if error.status in NOT_SERVED:
            raise Unsupported(error) from None
        raise


# ---- users ---------------------------------------------------------------------------------------------


def add_user(ctx: Context, args: argparse.Namespace) -> None:
    password = args.user_password if args.user_password is not None else sys.stdin.readline().rstrip("\n")
    ctx.say(f'Adding user "{args.user}" ...')
    if lookups.user_exists(ctx, args.user):
        raise CtlError(f'user "{args.user}" already exists')
    _put(ctx, api_path("users", args.user), {"password": password, "tags": ""})


def delete_user(ctx: Context, args: argparse.Namespace) -> None:
    ctx.say(f'Deleting user "{args.user}" ...')
    try:
        ctx.client.delete(api_path("users", args.user))
    except ApiError as error:
        if error.status in NOT_SERVED:
            raise explain(error, lookups.user_exists(ctx, args.user), lookups.no_user(args.user)) from None
        raise


def change_password(ctx: Context, args: argparse.Namespace) -> None:
    ctx.say(f'Changing password for user "{args.user}" ...')
    user = lookups.user(ctx, args.user)
    _put(
        ctx,
        api_path("users", args.user),
        {"password": args.user_password, "tags": _tags_text(user.get("tags"))},
    )


def set_user_tags(ctx: Context, args: argparse.Namespace) -> None:
    ctx.say(f'Setting tags for user "{args.user}" to [{", ".join(args.tags)}] ...')
    user = lookups.user(ctx, args.user)
    body: dict[str, Any] = {"tags": ",".join(args.tags)}
    # Sent back as it is, so the PUT keeps the password.
    if "password_hash" in user:
        body["password_hash"] = user["password_hash"]
        if user.get("hashing_algorithm"):
            body["hashing_algorithm"] = user["hashing_algorithm"]
    _put(ctx, api_path("users", args.user), body)


# ---- vhosts and permissions ----------------------------------------------------------------------------


def add_vhost(ctx: Context, args: argparse.Namespace) -> None:
    ctx.say(f'Adding vhost "{args.vhost_name}" ...')
    body: dict[str, Any] = {}
    if args.description is not None:
        body["description"] = args.description
    if args.tags is not None:
        body["tags"] = args.tags
    if args.default_queue_type is not None:
        body["default_queue_type"] = args.default_queue_type
    _put(ctx, api_path("vhosts", args.vhost_name), body)


def delete_vhost(ctx: Context, args: argparse.Namespace) -> None:
    name = args.vhost_name
    ctx.say(f'Deleting vhost "{name}" ...')
    try:
        ctx.client.delete(api_path("vhosts", name))
    except ApiError as error:
        if error.status in NOT_SERVED:
            raise explain(error, lookups.vhost_exists(ctx, name), lookups.no_vhost(name)) from None
        raise


def set_permissions(ctx: Context, args: argparse.Namespace) -> None:
    ctx.say(f'Setting permissions for user "{args.user}" in vhost "{ctx.vhost}" ...')
    body = {"configure": args.conf, "write": args.write, "read": args.read}
    try:
        ctx.client.put(api_path("permissions", ctx.vhost, args.user), body)
    except ApiError as error:
        if error.status in (401, 403):
            raise
        lookups.require_user_and_vhost(ctx, error, args.user, ctx.vhost)
        if error.status in NOT_SERVED:
            raise Unsupported(error) from None
        raise


def clear_permissions(ctx: Context, args: argparse.Namespace) -> None:
    ctx.say(f'Clearing permissions for user "{args.user}" in vhost "{ctx.vhost}" ...')
    try:
        ctx.client.delete(api_path("permissions", ctx.vhost, args.user))
    except ApiError as error:
        if error.status not in NOT_SERVED:
            raise
        lookups.require_user_and_vhost(ctx, error, args.user, ctx.vhost)
        if error.status == 405 or not lookups.permissions_served(ctx):
            raise Unsupported(error) from None
        # The user had no permissions there: nothing to clear, done, as with rabbitmqctl.


# ---- queues --------------------------------------------------------------------------------------------


def purge_queue(ctx: Context, args: argparse.Namespace) -> None:
    ctx.say(f"Purging queue '{args.queue}' in vhost '{ctx.vhost}' ...")
    try:
        ctx.client.delete(api_path("queues", ctx.vhost, args.queue, "contents"))
    except ApiError as error:
        if error.status in NOT_SERVED:
            exists = lookups.queue_exists(ctx, ctx.vhost, args.queue)
            raise explain(error, exists, lookups.no_queue(args.queue, ctx.vhost)) from None
        raise


def delete_queue(ctx: Context, args: argparse.Namespace) -> None:
    ctx.say(f"Deleting queue '{args.queue}' on vhost '{ctx.vhost}' ...")
    path = api_path("queues", ctx.vhost, args.queue)
    missing = lookups.no_queue(args.queue, ctx.vhost)
    try:
        # The API's DELETE answers no count; the queue's own figure, read just before, stands in for it.
        ready = ctx.client.get(path).get("messages_ready")
    except ApiError as error:
        if error.status == 404:
            raise missing from None
        raise
    flags = (("if-empty", args.if_empty), ("if-unused", args.if_unused))
    conditions = [f"{flag}=true" for flag, on in flags if on]
    try:
        ctx.client.delete(path + ("?" + "&".join(conditions) if conditions else ""))
    except ApiError as error:
        if error.status in NOT_SERVED:
            raise explain(error, lookups.queue_exists(ctx, ctx.vhost, args.queue), missing) from None
        raise
    if ready is not None:  # the verb's result, printed even with -q (as rabbitmqctl does)
        ctx.out.write(f"Queue was successfully deleted with {ready} ready messages\n")


# ---- definitions ---------------------------------------------------------------------------------------


def export_definitions(ctx: Context, args: argparse.Namespace) -> None:
    try:
        definitions = ctx.client.get(api_path("definitions"))
    except ApiError as error:
        if error.status in NOT_SERVED:
            raise Unsupported(error) from None
        raise
    text = json.dumps(definitions, separators=(",", ":"), ensure_ascii=False)
    if args.file == "-":
        ctx.out.write(text + "\n")
        return
    ctx.say(f'Exporting definitions in JSON to a file at "{args.file}" ...')
    try:
        with open(args.file, "w", encoding="utf-8") as file:
            file.write(text)
    except OSError as error:
        raise CtlError(f"cannot write {args.file}: {error.strerror or error}", EX_DATAERR) from None


def _read_definitions(ctx: Context, file: str) -> dict[str, Any]:
    if file == "-":
        source = "standard input"
        ctx.say("Importing definitions in JSON from standard input ...")
        text = sys.stdin.read()
    else:
        source = file
        ctx.say(f'Importing definitions in JSON from a file at "{file}" ...')
        try:
            with open(file, encoding="utf-8") as stream:
                text = stream.read()
        except OSError as error:
            raise CtlError(f"cannot read {file}: {error.strerror or error}", EX_DATAERR) from None
    try:
        definitions = json.loads(text)
    except ValueError as error:
        raise CtlError(f"{source} is not valid JSON: {error}", EX_DATAERR) from None
    if not isinstance(definitions, dict):
        raise CtlError(f"{source} is not a definitions file: expected a JSON object", EX_DATAERR)
    return definitions


def import_definitions(ctx: Context, args: argparse.Namespace) -> None:
    definitions = _read_definitions(ctx, args.file)
    try:
        ctx.client.post(api_path("definitions"), definitions)
    except ApiError as error:
        if error.status in NOT_SERVED:
            raise Unsupported(error) from None
        raise
    ctx.say("Definitions imported.")


# ---- connections ---------------------------------------------------------------------------------------


def close_connection(ctx: Context, args: argparse.Namespace) -> None:
    name = args.connection
    ctx.say(f'Closing connection "{name}", reason: {args.explanation}...')
    # RabbitMQ's API takes the reason the client is told in the X-Reason header.
    headers = {"x-reason": args.explanation.encode().decode("latin-1")}
    try:
        ctx.client.delete(api_path("connections", name), headers=headers)
    except ApiError as error:
        if error.status in NOT_SERVED:
            missing = CtlError(f"connection '{name}' does not exist", EX_UNAVAILABLE)
            raise explain(error, lookups.connection_exists(ctx, name), missing) from None
        raise


# ---- arguments -----------------------------------------------------------------------------------------


# Stored as user/user_password: username and password are the login's (--username, --password).
def _username(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("user", metavar="username")


def _username_password(optional: bool) -> Any:
    def add(parser: argparse.ArgumentParser) -> None:
        _username(parser)
        if optional:
            parser.add_argument(
                "user_password", metavar="password", nargs="?", help="read from standard input when left out"
            )
        else:
            parser.add_argument("user_password", metavar="password")

    return add


def _user_tags(parser: argparse.ArgumentParser) -> None:
    _username(parser)
    parser.add_argument("tags", nargs="*", metavar="tag", help="administrator, monitoring, management, ...")


def _vhost_name(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("vhost_name", metavar="vhost")


def _add_vhost(parser: argparse.ArgumentParser) -> None:
    _vhost_name(parser)
    parser.add_argument("--description")
    parser.add_argument("--tags", help="comma-separated")
    parser.add_argument("--default-queue-type", choices=("classic", "quorum", "stream"))


def _permissions(parser: argparse.ArgumentParser) -> None:
    _username(parser)
    parser.add_argument("conf", help="regular expression of the resources the user may configure")
    parser.add_argument("write", help="... may write to")
    parser.add_argument("read", help="... may read from")


def _queue(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("queue", metavar="queue_name")


def _delete_queue(parser: argparse.ArgumentParser) -> None:
    _queue(parser)
    parser.add_argument("-e", "--if-empty", action="store_true", help="only if it has no ready messages")
    parser.add_argument("-u", "--if-unused", action="store_true", help="only if it has no consumers")


def _file(help_text: str) -> Any:
    def add(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("file", metavar="FILE", help=help_text)

    return add


def _close_connection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("connection", help="the connection's name, as list_connections name shows it")
    parser.add_argument("explanation", help="the reason the client is told")


VERBS = [
    Verb("add_user", "Create a user (without tags or permissions).", _username_password(True), add_user),
    Verb("delete_user", "Delete a user.", _username, delete_user),
    Verb("change_password", "Change a user's password.", _username_password(False), change_password),
    Verb("set_user_tags", "Set a user's tags (none: clear them).", _user_tags, set_user_tags),
    Verb("add_vhost", "Create a virtual host.", _add_vhost, add_vhost),
    Verb("delete_vhost", "Delete a virtual host and everything in it.", _vhost_name, delete_vhost),
    Verb("set_permissions", "Set a user's permissions in a vhost (-p).", _permissions, set_permissions),
    Verb("clear_permissions", "Remove a user's permissions in a vhost (-p).", _username, clear_permissions),
    Verb("purge_queue", "Remove a queue's ready messages.", _queue, purge_queue),
    Verb("delete_queue", "Delete a queue.", _delete_queue, delete_queue),
    Verb(
        "export_definitions",
        "Write every user, vhost, permission, policy, exchange, queue and binding "
        "as RabbitMQ's definitions JSON.",
        _file("the file to write, or - for standard output"),
        export_definitions,
    ),
    Verb(
        "import_definitions",
        "Load a definitions JSON file (RabbitMQ's format).",
        _file("the file to read, or - for standard input"),
        import_definitions,
    ),
    Verb(
        "close_connection", "Close a client connection, telling it why.", _close_connection, close_connection
    ),
]
