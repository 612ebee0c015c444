"""Leveret: an AMQP 0-9-1 broker on trio that RabbitMQ clients use unchanged."""

__version__ = "0.1.0"
