"""A pika load client that records its history (history.py): a confirming publisher or an acking consumer.

    python -m interop.checker.pika_load publisher --name p1 --out p1.jsonl --url URL [--url URL...] \
        --queue Q [--queue Q...] [--max N] [--rate R]
    python -m interop.checker.pika_load consumer --name c1 --out c1.jsonl --url URL... --queue Q...

It connects to the first URL, and after any failure to the next one (round robin), declaring its durable
queues each time. SIGTERM stops a publisher after the publish in hand; a consumer then drains: it goes on
until no delivery came for --idle seconds (or --drain-timeout passed), settles its acks (basic.qos-ok,
then channel.close-ok) and exits.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pika
from pika.adapters.blocking_connection import BlockingChannel
from pika.exceptions import AMQPError, NackError, UnroutableError
from pika.spec import Basic, BasicProperties

from .history import Recorder, message_id

PERSISTENT = BasicProperties(delivery_mode=2)
RECONNECT_PAUSE = 0.3
SETTLE_EVERY = 0.5  # seconds between basic.qos round trips that settle the acks sent before them


class Client:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.recorder = Recorder(args.out, args.name)
        self.stopping = False
        self.incarnation = 0
        self._next_url = 0
        signal.signal(signal.SIGTERM, self._stop)

    def _stop(self, signum: int, frame: object) -> None:
        self.stopping = True

    def connect(self) -> pika.BlockingConnection:
        url = self.args.url[self._next_url % len(self.args.url)]
        self._next_url += 1
        self.incarnation += 1
        parameters = pika.URLParameters(url)
        # Short heartbeats and timeouts: a paused or cut-off node must be noticed in seconds.
        parameters.heartbeat = self.args.heartbeat
        parameters.socket_timeout = 3
        parameters.blocked_connection_timeout = 10
        parameters.connection_attempts = 1
        parameters.stack_timeout = 5
        connection = pika.BlockingConnection(parameters)
        self.recorder.record("connect", url=url, incarnation=self.incarnation)
        return connection

    def declare(self, channel: BlockingChannel) -> None:
        arguments = {"x-queue-type": self.args.queue_type}
        for queue in self.args.queue:
            channel.queue_declare(queue, durable=True, arguments=arguments)

    def gives_up(self) -> bool:
        """After a failure: whether to stop rather than connect again."""
        raise NotImplementedError

    def run_with_reconnects(self, session: Callable[[pika.BlockingConnection], bool]) -> None:
        """Runs `session` on fresh connections until it returns True (done)."""
        while True:
            connection = None
            try:
                connection = self.connect()
                if session(connection):
                    return
            # pika raises ValueError when a socket is reset between connect and its first read.
            except (AMQPError, OSError, ValueError) as error:
                self.recorder.record("error", error=repr(error)[:200], incarnation=self.incarnation)
            finally:
                if connection is not None and connection.is_open:
                    try:
                        connection.close()
                    except (AMQPError, OSError):
                        pass
            if self.gives_up():
                return
            time.sleep(RECONNECT_PAUSE)


class Publisher(Client):
    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.attempted = 0

    def run(self) -> None:
        self.run_with_reconnects(self.session)
        self.recorder.close()

    def gives_up(self) -> bool:
        return self.stopping or (self.args.max is not None and self.attempted >= self.args.max)

    def session(self, connection: pika.BlockingConnection) -> bool:
        channel = connection.channel()
        self.declare(channel)
        channel.confirm_delivery()
        stream = f"{self.args.name}.{self.incarnation}"
        seq = 0
        started = time.monotonic()
        while not self.stopping and (self.args.max is None or self.attempted < self.args.max):
            if self.args.rate:
                ahead = seq / self.args.rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
            seq += 1
            self.attempted += 1
            queue = self.args.queue[seq % len(self.args.queue)]
            identifier = message_id(stream, seq)
            self.recorder.record("publish", id=identifier, publisher=stream, seq=seq, queue=queue)
            try:
                channel.basic_publish("", queue, identifier.encode(), PERSISTENT)
            except NackError:
                self.recorder.record("confirm", id=identifier, outcome="nack")
                continue
            except UnroutableError:
                self.recorder.record("confirm", id=identifier, outcome="nack")
                continue
            except BaseException:
                self.recorder.record("confirm", id=identifier, outcome="unknown")
                raise
            self.recorder.record("confirm", id=identifier, outcome="ack")
        return True


class Consumer(Client):
    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.last_delivery = time.monotonic()
        self.drain_started: float | None = None
        self.channel_key = ""

    def run(self) -> None:
        self.run_with_reconnects(self.session)
        self.recorder.close()

    def gives_up(self) -> bool:
        if not self.stopping:
            return False
        if self.drain_started is None:
            self.drain_started = time.monotonic()
        return time.monotonic() - self.drain_started > self.args.drain_timeout

    def drained(self) -> bool:
        if not self.stopping:
            return False
        now = time.monotonic()
        if self.drain_started is None:
            self.drain_started = now
            self.last_delivery = max(self.last_delivery, now - self.args.idle / 2)
        return now - self.last_delivery > self.args.idle or now - self.drain_started > self.args.drain_timeout

    def session(self, connection: pika.BlockingConnection) -> bool:
        channel = connection.channel()
        self.declare(channel)
        channel.basic_qos(prefetch_count=self.args.prefetch)
        consumer = f"{self.args.name}.{self.incarnation}"
        self.channel_key = f"{consumer}.ch{channel.channel_number}"

        def on_message(
            channel: BlockingChannel, method: Basic.Deliver, _props: BasicProperties, body: bytes
        ) -> None:
            identifier = body.decode(errors="replace")
            self.recorder.record(
                "deliver",
                id=identifier,
                queue=method.routing_key,
                consumer=consumer,
                redelivered=method.redelivered,
                channel=self.channel_key,
            )
            self.last_delivery = time.monotonic()
            channel.basic_ack(method.delivery_tag)
            self.recorder.record("ack", id=identifier, queue=method.routing_key, channel=self.channel_key)

        for queue in self.args.queue:
            channel.basic_consume(queue, on_message)
        last_settle = time.monotonic()
        while not self.drained():
            connection.process_data_events(time_limit=0.1)
            if time.monotonic() - last_settle > SETTLE_EVERY:
                channel.basic_qos(prefetch_count=self.args.prefetch)
                self.recorder.record("settled", channel=self.channel_key)
                last_settle = time.monotonic()
        channel.basic_qos(prefetch_count=self.args.prefetch)
        self.recorder.record("settled", channel=self.channel_key)
        channel.close()
        self.recorder.record("settled", channel=self.channel_key)
        return True


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="pika_load")
    parser.add_argument("role", choices=("publisher", "consumer"))
    parser.add_argument("--name", required=True)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--url", action="append", required=True)
    parser.add_argument("--queue", action="append", required=True)
    parser.add_argument("--queue-type", default="quorum")
    parser.add_argument("--heartbeat", type=int, default=2)
    parser.add_argument("--max", type=int, default=None, help="publishes to attempt, then stop")
    parser.add_argument("--rate", type=float, default=0.0, help="publishes a second per session (0: no cap)")
    parser.add_argument("--prefetch", type=int, default=50)
    parser.add_argument("--idle", type=float, default=3.0)
    parser.add_argument("--drain-timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    (Publisher if args.role == "publisher" else Consumer)(args).run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
