"""Consumers under kombu's event loop, with kombu's own pyamqp transport; each mode prints JSON.

usage: AMQP_URL=... python kombu_event_loop.py thread-ack QUEUE
       AMQP_URL=... python kombu_event_loop.py revive ACTIVE_QUEUE INACTIVE_QUEUE

thread-ack: a consumer registered with kombu's Hub (the loop Celery's worker runs), prefetch 5, hands each
delivery to a new thread, which acks it while the loop keeps reading. 20 messages: the loop only gets past
the fifth if the broker takes acks written from those threads.

revive: kombu's regression test for consumer revival (kombu #814): a consumer on one queue, with a second
queue added but never consumed from, loses its socket; Connection.ensure reconnects and revives it. Only the
queue it consumed from is consumed again, and a message published after the recovery reaches it.

Run from outside the repository: kombu's transport is PyPI's `amqp`, which the repo's `amqp/` shadows.
"""

import json
import os
import socket
import sys
import threading
import time

from kombu import Connection, Consumer, Message, Producer, Queue
from kombu.asynchronous import Hub

COUNT = 20
PREFETCH = 5


def thread_ack(queue_name: str) -> dict[str, object]:
    queue = Queue(queue_name, routing_key=queue_name, durable=False, auto_delete=False)
    received: list[int] = []
    acked: list[int] = []
    threads: list[threading.Thread] = []
    lock = threading.Lock()

    def ack_later(message: Message, number: int) -> None:
        time.sleep(0.01)  # while the loop is back reading the socket
        message.ack()
        with lock:
            acked.append(number)

    def on_message(body: dict[str, int], message: Message) -> None:
        received.append(body["n"])
        worker = threading.Thread(target=ack_later, args=(message, body["n"]))
        threads.append(worker)
        worker.start()

    with Connection(os.environ["AMQP_URL"], connect_timeout=10) as connection:
        producer = Producer(connection.channel(), serializer="json")
        for n in range(COUNT):
            producer.publish({"n": n}, exchange="", routing_key=queue_name, declare=[queue])
        hub = Hub()
        connection.register_with_event_loop(hub)
        consumer = Consumer(connection, queues=[queue], callbacks=[on_message], accept=["json"])
        consumer.qos(prefetch_count=PREFETCH)
        consumer.consume()
        deadline = time.monotonic() + 20
        while (len(received) < COUNT or len(acked) < COUNT) and time.monotonic() < deadline:
            hub.run_once()
        for worker in threads:
            worker.join(5)
        consumer.cancel()
        hub.close()
        # What the broker kept: nothing ready, nothing unacked (a fresh channel sees no message).
        channel = connection.channel()
        _, ready, consumers = channel.queue_declare(queue_name, passive=True)
        leftover = channel.basic_get(queue_name, no_ack=True)
        channel.queue_delete(queue_name)
    return {"received": received, "acked": sorted(acked), "ready": ready, "consumers": consumers,
            "leftover": leftover is not None}


def revive(active_name: str, inactive_name: str) -> dict[str, object]:
    active = Queue(active_name, routing_key=active_name)  # the default exchange: routing key = name
    inactive = Queue(inactive_name, routing_key=inactive_name)
    received: list[object] = []

    def on_message(body: object, message: Message) -> None:
        received.append(body)
        message.ack()

    def drain(connection: Connection, timeout: float) -> None:
        try:
            connection.drain_events(timeout=timeout)
        except TimeoutError:
            pass

    result: dict[str, object] = {}
    with Connection(os.environ["AMQP_URL"], connect_timeout=10) as connection:
        with connection.channel():
            consumer = Consumer(connection, [active], accept=["json"])
            consumer.register_callback(on_message)
            with consumer:
                consumer.add_queue(inactive)  # registered, never consumed from
                result["inactive_consumed_before"] = inactive.name in consumer._active_tags
                sock = connection.connection.transport.sock
                sock.shutdown(socket.SHUT_RDWR)  # the broker vanishes, as far as this client knows
                sock.close()
                safe_drain = connection.ensure(consumer, drain, max_retries=3)
                safe_drain(connection, 1)
                result["active_consumed"] = active.name in consumer._active_tags
                result["inactive_consumed"] = inactive.name in consumer._active_tags
                producer = Producer(connection)
                producer.publish({"hello": "world"}, retry=True, exchange=active.exchange,
                                 routing_key=active.routing_key, declare=[active], serializer="json")
                safe_drain(connection, 5)
        channel = connection.channel()
        result["inactive_consumers"] = channel.queue_declare(inactive_name, passive=True)[2]
        channel.queue_delete(active_name)
        channel.queue_delete(inactive_name)
    result["received"] = received
    return result


def main() -> None:
    mode, names = sys.argv[1], sys.argv[2:]
    result = thread_ack(*names) if mode == "thread-ack" else revive(*names)
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
