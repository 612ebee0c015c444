"""`leveret [--config FILE] [--host H] [--port P] [--data-dir DIR]`: start a broker."""

from __future__ import annotations

import argparse
import logging
import signal
import sys

import trio

from leveret import __version__
from leveret.broker.node import Node
from leveret.broker.server.listener import serve_amqp
from leveret.broker.server.timers import run_timers
from leveret.config import Config, ConfigError, load_config

log = logging.getLogger("leveret")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="leveret", description="An AMQP 0-9-1 broker that RabbitMQ clients use.")
    parser.add_argument("--config", help="YAML configuration file (default: the embedded one)")
    parser.add_argument("--host", help="address to listen on for AMQP (overrides listeners.amqp.host)")
    parser.add_argument("--port", type=int, help="AMQP port (overrides listeners.amqp.port)")
    parser.add_argument("--data-dir", help="where durable data lives (overrides data_dir)")
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
    return load_config(args.config, overrides=overrides)


async def run(config: Config) -> None:
    node = Node(config, clock=trio.current_time)
    async with trio.open_nursery() as nursery:
        await nursery.start(run_timers, node)
        await nursery.start(serve_amqp, node, config.listeners.amqp.host, config.listeners.amqp.port)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.info("received %s, shutting down", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break


def main(argv: list[str] | None = None) -> None:
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
        trio.run(run, config)
    except OSError as error:
        print(f"leveret: {error}", file=sys.stderr)
        sys.exit(1)
