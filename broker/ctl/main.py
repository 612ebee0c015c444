"""`leveretctl` / `leveret ctl`: run one verb against the management API, exit with its status."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TextIO

from . import admin, limits, listing, nodes, policies
from .arguments import build_parser, parse
from .client import ManagementClient
from .context import Context, Verb
from .endpoint import resolve
from .errors import EX_USAGE, CtlError

VERBS: list[Verb] = sorted(
    [*listing.VERBS, *admin.VERBS, *policies.VERBS, *limits.VERBS, *nodes.VERBS], key=lambda verb: verb.name
)


def run(
    argv: Sequence[str] | None = None,
    prog: str = "leveretctl",
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Run one command line; returns the exit status. `out`/`err`: stdout and stderr by default."""
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    parser = build_parser(prog, VERBS)
    args = parse(parser, argv)
    if args.verb is None:
        parser.print_help(err)
        return EX_USAGE
    if args.verb == "help":
        return _help(parser, args, err)
    verb = next(v for v in VERBS if v.name == args.verb)
    try:
        endpoint = resolve(args.host, args.port, args.username, args.password, args.config)
        with ManagementClient(endpoint, args.timeout) as client:
            verb.run(_context(client, out, args), args)
    except CtlError as error:
        out.flush()
        err.write(f"Error: {error}\n")
        return error.exit_code
    return 0


def _context(client: ManagementClient, out: TextIO, args: argparse.Namespace) -> Context:
    return Context(
        client=client,
        out=out,
        vhost=args.vhost,
        formatter=args.formatter,
        quiet=args.quiet or args.silent,
        headers=not (args.silent or args.no_table_headers),
        timeout=args.timeout,
    )


def _help(parser: argparse.ArgumentParser, args: argparse.Namespace, err: TextIO) -> int:
    if args.topic is None:
        parser.print_help()
        return 0
    if args.topic not in {v.name for v in VERBS}:
        err.write(f"Error: no verb {args.topic!r}; '{parser.prog} help' lists them\n")
        return EX_USAGE
    parser.parse_args([args.topic, "--help"])  # prints the verb's help and exits 0
    return 0


def main(argv: Sequence[str] | None = None, prog: str = "leveretctl") -> None:
    sys.exit(run(argv, prog))
