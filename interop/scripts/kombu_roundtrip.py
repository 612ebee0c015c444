"""A kombu Producer/Consumer round trip and a SimpleQueue put/get, printed as JSON.

usage: AMQP_URL=... python kombu_roundtrip.py EXCHANGE QUEUE
Run from outside the repository: kombu's transport is PyPI's `amqp`, which the repo's `amqp/` shadows.
"""

import json
import os
import sys

from kombu import Connection, Consumer, Exchange, Message, Producer, Queue


def main() -> None:
    exchange_name, queue_name = sys.argv[1], sys.argv[2]
    exchange = Exchange(exchange_name, type="direct", durable=False, auto_delete=True)
    queue = Queue(queue_name, exchange, routing_key="tasks", durable=False, auto_delete=True)
    received: list[dict[str, object]] = []

    def on_message(body: dict[str, object], message: Message) -> None:
        received.append({"body": body, "headers": message.headers, "content_type": message.content_type})
        message.ack()

    with Connection(os.environ["AMQP_URL"], connect_timeout=10) as connection:
        producer = Producer(connection.channel(), exchange=exchange, serializer="json")
        for n in range(3):
            producer.publish({"n": n}, routing_key="tasks", declare=[queue], headers={"attempt": n})
        with Consumer(connection, queues=[queue], callbacks=[on_message], accept=["json"]):
            while len(received) < 3:
                connection.drain_events(timeout=10)

        # auto_delete: the queue goes when close() cancels the consumer.
        simple = connection.SimpleQueue(
            f"{queue_name}-simple", queue_opts={"durable": False, "auto_delete": True}
        )
        simple.put({"hello": "kombu"})
        message = simple.get(block=True, timeout=10)
        message.ack()
        simple_body = message.payload
        simple.close()

    print(json.dumps({"consumer": received, "simple": simple_body}, sort_keys=True))


if __name__ == "__main__":
    main()
