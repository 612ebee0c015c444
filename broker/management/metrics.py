"""Prometheus metrics, named as RabbitMQ's rabbitmq_prometheus plugin names them (with per-object queue
metrics). A custom collector reads the node at each scrape; prometheus_client writes the text format."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from leveret.broker.alarms import DISK, MEMORY
from leveret.broker.management.serializers import channels_of
from leveret.broker.node import Node

QUEUE_LABELS = ["vhost", "queue"]


class NodeCollector(Collector):
    def __init__(self, node: Node) -> None:
        self.node = node

    def collect(self) -> Iterator[Metric]:
        node = self.node
        ready = GaugeMetricFamily(
            "rabbitmq_queue_messages_ready",
            "Messages ready to be delivered to consumers",
            labels=QUEUE_LABELS,
        )
        unacked = GaugeMetricFamily(
            "rabbitmq_queue_messages_unacked",
            "Messages delivered to consumers but not yet acknowledged",
            labels=QUEUE_LABELS,
        )
        messages = GaugeMetricFamily(
            "rabbitmq_queue_messages", "Sum of ready and unacknowledged messages", labels=QUEUE_LABELS
        )
        consumers = GaugeMetricFamily("rabbitmq_queue_consumers", "Consumers on a queue", labels=QUEUE_LABELS)
        queues = list(node.queues())
        for q in queues:
            labels = [q.vhost, q.name]
            ready.add_metric(labels, q.message_count)
            unacked.add_metric(labels, q.unacked)
            messages.add_metric(labels, q.message_count + q.unacked)
            consumers.add_metric(labels, q.consumer_count)
        yield from (ready, unacked, messages, consumers)
        channels = channels_of(node.connections)
        yield GaugeMetricFamily(
            "rabbitmq_connections", "Connections currently open", value=len(node.connections)
        )
        yield GaugeMetricFamily("rabbitmq_channels", "Channels currently open", value=len(channels))
        yield GaugeMetricFamily(
            "rabbitmq_consumers",
            "Consumers currently connected",
            value=sum(len(ch.consumers) for ch in channels),
        )
        yield GaugeMetricFamily("rabbitmq_queues", "Queues available", value=len(queues))
        active = node.alarms.active
        yield GaugeMetricFamily(
            "rabbitmq_alarms_memory_used_watermark",
            "1 if the memory alarm is in effect",
            value=int(MEMORY in active),
        )
        yield GaugeMetricFamily(
            "rabbitmq_alarms_free_disk_space_watermark",
            "1 if the disk alarm is in effect",
            value=int(DISK in active),
        )


def metrics_registry(node: Node) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(node))
    # rabbitmq_process_resident_memory_bytes, rabbitmq_process_open_fds, ... (Linux /proc), as RabbitMQ.
    ProcessCollector(namespace="rabbitmq", registry=registry)
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
