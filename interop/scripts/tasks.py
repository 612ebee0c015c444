"""The Celery app of the interop test: broker from AMQP_URL, results over rpc://, queue from CELERY_QUEUE."""

import os

from celery import Celery

app = Celery("tasks", broker=os.environ["AMQP_URL"], backend="rpc://")
app.conf.task_default_queue = os.environ["CELERY_QUEUE"]
app.conf.broker_connection_retry_on_startup = True


@app.task
def add(x: int, y: int) -> int:
    return x + y
