"""A pika consumer that acks some messages, then holds a full prefetch window unacked until it is killed.

usage: AMQP_URL=... python pika_holding_consumer.py QUEUE PREFETCH ACKS
Prints "ack <body>" and "hold <body>" per delivery, then "READY" once the broker has handled the acks.
"""

import os
import sys

import pika
from pika.adapters.blocking_connection import BlockingChannel
from pika.spec import Basic


def main() -> None:
    queue, prefetch, acks = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    connection = pika.BlockingConnection(pika.URLParameters(os.environ["AMQP_URL"]))
    channel = connection.channel()
    channel.basic_qos(prefetch_count=prefetch)
    held: list[bytes] = []

    def on_message(
        ch: BlockingChannel, method: Basic.Deliver, _props: pika.BasicProperties, body: bytes
    ) -> None:
        nonlocal acks
        if acks > 0:
            acks -= 1
            ch.basic_ack(method.delivery_tag)
            print(f"ack {body.decode()}", flush=True)
        else:
            held.append(body)
            print(f"hold {body.decode()}", flush=True)

    channel.basic_consume(queue, on_message)
    while acks > 0 or len(held) < prefetch:
        connection.process_data_events(time_limit=1)
    # The broker answers this only after the acks sent before it on the same channel.
    channel.queue_declare(queue, passive=True)
    print("READY", flush=True)
    while True:
        connection.sleep(1)


if __name__ == "__main__":
    main()
