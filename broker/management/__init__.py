"""The management HTTP API (a read-only subset of RabbitMQ's, same paths and JSON) and Prometheus /metrics.

Served by hypercorn's trio worker; Starlette routes. Handlers read the live Node on the event loop thread,
so what they see is consistent: nothing else runs while a handler builds its answer.
"""
