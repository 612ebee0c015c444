"""Prometheus metrics, named as RabbitMQ's rabbitmq_prometheus plugin names them. A custom collector reads
the node at each scrape; prometheus_client writes the text format.

As in RabbitMQ, queue metrics are aggregated over the node by default (no labels, so an unauthenticated
scrape names no vhost or queue), and per queue (labels vhost and queue) in the per-object registry."""

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


_QUEUE_FAMILIES = (
    ("rabbitmq_queue_messages_ready", "Messages ready to be delivered to consumers"),
    ("rabbitmq_queue_messages_unacked", "Messages delivered to consumers but not yet acknowledged"),
    ("rabbitmq_queue_messages", "Sum of ready and unacknowledged messages"),
    ("rabbitmq_queue_consumers", "Consumers on a queue"),
)


class NodeCollector(Collector):
    def __init__(self, node: Node, *, per_object: bool) -> None:
        self.node = node
        self.per_object = per_object

    def collect(self) -> Iterator[Metric]:
        node = self.node
        queues = list(node.queues())
        rows = [
            ([q.vhost, q.name], (q.message_count, q.unacked, q.message_count + q.unacked, q.consumer_count))
            for q in queues
        ]
        for column, (name, documentation) in enumerate(_QUEUE_FAMILIES):
            if self.per_object:
                family = GaugeMetricFamily(name, documentation, labels=QUEUE_LABELS)
                for labels, values in rows:
                    family.add_metric(labels, values[column])
            else:
                total = sum(values[column] for _, values in rows)
                family = GaugeMetricFamily(name, documentation, value=total)
            yield family
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


def metrics_registry(node: Node, *, per_object: bool) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(node, per_object=per_object))
    # rabbitmq_process_resident_memory_bytes, rabbitmq_process_open_fds, ... (Linux /proc), as RabbitMQ.
    ProcessCollector(namespace="rabbitmq", registry=registry)
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
