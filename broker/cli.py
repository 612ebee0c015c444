"""`leveret [--config FILE] [--node NAME] [--host H] [--port P] [--data-dir DIR]`: start a broker.

`leveret dev-cluster [--nodes N]`: a whole local cluster (broker/server/local_cluster.py)."""

from __future__ import annotations

import argparse
import logging
import sys

import trio

from leveret import __version__
from leveret.broker.server.local_cluster import dev_cluster_main
from leveret.broker.server.main import run_node
from leveret.broker.server.tls import TlsSetupError
from leveret.broker.store import DefinitionsError
from leveret.config import Config, ConfigError, load_config


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="leveret", description="An AMQP 0-9-1 broker that RabbitMQ clients use."
    )
    parser.add_argument("--config", help="YAML configuration file (default: the embedded one)")
    parser.add_argument("--host", help="address to listen on for AMQP (overrides listeners.amqp.host)")
    parser.add_argument("--port", type=int, help="AMQP port (overrides listeners.amqp.port)")
    parser.add_argument("--data-dir", help="where durable data lives (overrides data_dir)")
    parser.add_argument("--node", help="this node's name in the configuration's cluster.nodes")
    parser.add_argument("--version", action="version", version=f"leveret {__version__}")
    return parser.parse_args(argv)


def build_config(args: argparse.Namespace) -> Config:
    overrides: dict[str, object] = {}
    if args.host is not None:
        overrides["listeners.amqp.host"] = args.host
    if args.port is not None:
        overrides["listeners.amqp.port"] = args.port
    if args.data_dir is not None:
        overrides["data_dir"] = args.data_dir
    if args.node is not None:
        overrides["cluster.node"] = args.node
    return load_config(args.config, overrides=overrides)


def main(argv: list[str] | None = None) -> None:
    arguments = sys.argv[1:] if argv is None else argv
    if arguments[:1] == ["dev-cluster"]:
        sys.exit(dev_cluster_main(arguments[1:]))
    args = parse_args(argv)
    try:
        config = build_config(args)
    except ConfigError as error:
        print(f"leveret: invalid configuration:\n{error}", file=sys.stderr)
        sys.exit(2)
    logging.basicConfig(
        level=getattr(logging, config.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        trio.run(run_node, config)
    except (OSError, DefinitionsError, TlsSetupError) as error:
        print(f"leveret: {error}", file=sys.stderr)
        sys.exit(1)
