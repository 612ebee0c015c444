"""The command line: rabbitmqctl's shape, `leveretctl [options] <verb> [arguments] [options]`.

The global options are accepted before or after the verb, as rabbitmqctl accepts them. A bad command line
exits with 64 (EX_USAGE), as rabbitmqctl does.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from .context import FORMATTERS, Verb
from .errors import EX_USAGE

DEFAULT_TIMEOUT = 60.0
GLOBAL_DEFAULTS: dict[str, Any] = {
    "host": None,
    "port": None,
    "username": None,
    "password": None,
    "config": None,
    "vhost": "/",
    "quiet": False,
    "silent": False,
    "no_table_headers": False,
    "formatter": "table",
    "timeout": DEFAULT_TIMEOUT,
}


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EX_USAGE, f"Error: {message}\n")


def _global_options() -> Parser:
    """The options every verb takes. Their defaults are filled in after parsing (GLOBAL_DEFAULTS): a default
    here would let the verb's parser overwrite a value given before the verb."""
    common = Parser(add_help=False, argument_default=argparse.SUPPRESS)
    api = common.add_argument_group("management API")
    api.add_argument("--host", help="its host (default: 127.0.0.1, or from --config / LEVERET_CTL_URL)")
    api.add_argument("--port", type=int, help="its port (default: 15672)")
    api.add_argument("--username", help="user to log in as (default: guest)")
    api.add_argument("--password", help="its password (default: guest)")
    api.add_argument("--config", metavar="FILE", help="a Leveret configuration: use its listeners.management")
    api.add_argument(
        "-t", "--timeout", type=float, help=f"seconds to wait for an answer (default: {DEFAULT_TIMEOUT:g})"
    )
    out = common.add_argument_group("output")
    out.add_argument("-p", "--vhost", help="the virtual host to act on (default: /)")
    out.add_argument("-q", "--quiet", action="store_true", help="no informational messages")
    out.add_argument(
        "-s", "--silent", action="store_true", help="no informational messages nor table headers"
    )
    out.add_argument("--no-table-headers", action="store_true", help="no header row over tables")
    out.add_argument("--formatter", choices=FORMATTERS, help="table (default) or json")
    return common


def build_parser(prog: str, verbs: Sequence[Verb]) -> argparse.ArgumentParser:
    common = _global_options()
    parser = Parser(
        prog=prog,
        parents=[common],
        description="rabbitmqctl's verbs over the management HTTP API of Leveret or RabbitMQ. "
        f"'{prog} help VERB' or '{prog} VERB --help' describes a verb.",
    )
    subparsers = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=Parser)
    helper = subparsers.add_parser("help", help="Describe a verb, or list them all.")
    helper.add_argument("topic", nargs="?", metavar="VERB")
    for verb in verbs:
        sub = subparsers.add_parser(
            verb.name, parents=[common], help=verb.summary, description=verb.description or verb.summary
        )
        verb.add_arguments(sub)
    return parser


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    args = parser.parse_args(argv)
    for key, value in GLOBAL_DEFAULTS.items():
        if not hasattr(args, key):
            setattr(args, key, value)
    return args
