"""`leveret [--config FILE] [--node NAME] [--host H] [--port P] [--data-dir DIR] [--log-level L] ...`.

`leveret dev-cluster [--nodes N]`: a whole local cluster (broker/server/local_cluster.py).

A start that fails says so in one line on stderr (what failed, where, the setting that changes it)
and exits with 1 (2 for a bad command line or configuration); never with a traceback.
"""

from __future__ import annotations

import argparse
import gc
import sys

import trio

from leveret import __version__
from leveret.broker.log_format import configure_logging
from leveret.broker.server.local_cluster import dev_cluster_main
from leveret.broker.server.main import run_node
from leveret.broker.server.startup import StartError
from leveret.broker.store import DefinitionsError
from leveret.config import Config, ConfigError, load_config

DEFAULTS = Config()  # the embedded configuration's values, shown in --help
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port in 1..65535, got {text!r}")
    return port


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="leveret",
        description="An AMQP 0-9-1 broker that RabbitMQ clients use. Each flag overrides the configuration "
        "key it names; the defaults shown are the embedded configuration's.",
    )
    amqp = DEFAULTS.listeners.amqp
    parser.add_argument(
        "--config", metavar="FILE", help="YAML configuration file (default: the embedded config/default.yaml)"
    )
    parser.add_argument(
        "--host",
        help=f"address to listen on for AMQP: listeners.amqp.host (default: {' and '.join(amqp.hosts)})",
    )
    parser.add_argument(
        "--port", type=_port, help=f"AMQP port: listeners.amqp.port (default: {amqp.port})"
    )
    parser.add_argument(
        "--data-dir", metavar="DIR", help=f"where durable data lives: data_dir (default: {DEFAULTS.data_dir})"
    )
    parser.add_argument(
        "--log-level", choices=LOG_LEVELS, help=f"log_level (default: {DEFAULTS.log_level})"
    )
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        help=f"log_format: one-line text records or JSON lines, on stderr (default: {DEFAULTS.log_format})",
    )
    parser.add_argument(
        "--node", metavar="NAME", help="this node's name in the configuration's cluster.nodes: cluster.node"
    )
    parser.add_argument("--version", action="version", version=f"leveret {__version__}")
    return parser.parse_args(argv)


def build_config(args: argparse.Namespace) -> Config:
    flags = {
        "listeners.amqp.host": args.host,
        "listeners.amqp.port": args.port,
        "data_dir": args.data_dir,
        "log_level": args.log_level,
        "log_format": args.log_format,
        "cluster.node": args.node,
    }
    overrides = {key: value for key, value in flags.items() if value is not None}
    return load_config(args.config, overrides=overrides)


def config_failure(error: ConfigError) -> str:
    """One line for one problem; the list when there are several, so one edit can fix them all."""
    if len(error.errors) == 1:
        return f"leveret: invalid configuration in {error.source}: {error.errors[0]}"
    return f"leveret: invalid configuration: {error}"


def start_failures(error: BaseException) -> list[str] | None:
    """The messages of a failed start, from `error` or the exception groups trio wraps it in; None when
    something else went wrong (a bug: its traceback is the report)."""
    if isinstance(error, BaseExceptionGroup):
        found: list[str] = []
        for inner in error.exceptions:
            messages = start_failures(inner)
            if messages is None:
                return None
            found += [message for message in messages if message not in found]
        return found
    if isinstance(error, (StartError, DefinitionsError)):
        return [str(error)]
    return None


def main(argv: list[str] | None = None) -> None:
    arguments = sys.argv[1:] if argv is None else argv
    if arguments[:1] == ["dev-cluster"]:
        sys.exit(dev_cluster_main(arguments[1:]))
    args = parse_args(argv)
    try:
        config = build_config(args)
    except ConfigError as error:
        print(config_failure(error), file=sys.stderr)
        sys.exit(2)
    configure_logging(config.log_level, config.log_format)
    # Everything imported so far (~50k objects: modules, classes, functions) lives as long as the
    # process; frozen, a full collection no longer walks it (~10-40 ms on this machine, a stall of
    # every connection). Only the imports: objects made later, which may die in cycles, stay collectable.
    gc.freeze()
    try:
        trio.run(run_node, config)
    except KeyboardInterrupt:  # Ctrl-C before the node listens for signals (during recovery)
        print("leveret: interrupted", file=sys.stderr)
        sys.exit(130)
    except (StartError, DefinitionsError, BaseExceptionGroup) as error:
        messages = start_failures(error)
        if messages is None:
            raise
        for message in messages:
            print(f"leveret: {message}", file=sys.stderr)
        sys.exit(1)
