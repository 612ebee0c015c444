"""status and cluster_status: the node (or nodes) as /api/overview, /api/nodes and the alarms check show them.

A broker without /api/nodes (Leveret before its cluster) is one running node: the overview's. Facts the
API does not give (an OS pid, memory) are left out rather than guessed.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from .client import api_path
from .context import Context, Verb, no_arguments
from .errors import ApiError

Json = dict[str, Any]
GB = 1_000_000_000
PURPOSES = {
    "amqp": "AMQP 0-9-1",
    "amqp/ssl": "AMQP 0-9-1 over TLS",
    "http": "HTTP API",
    "https": "HTTP API over TLS",
    "http/prometheus": "Prometheus exporter API over HTTP",
    "clustering": "inter-node and CLI tool communication",
}
ALARM_NAMES = {"memory": "Memory", "disk": "Free disk space"}


def _nodes(ctx: Context, overview: Json) -> list[Json]:
    try:
        nodes = ctx.client.get(api_path("nodes"))
    except ApiError as error:
        if error.status not in (404, 405):
            raise
        nodes = None
    if not nodes:
        return [{"name": overview.get("node"), "running": True, "type": "disc"}]
    return list(nodes)


def _alarms(ctx: Context) -> list[Json]:
    """The alarms in effect: the health check answers 200 without any, 503 listing them."""
    try:
        ctx.client.get(api_path("health", "checks", "alarms"))
    except ApiError as error:
        if error.status == 503 and isinstance(error.body, dict):
            return list(error.body.get("alarms") or [])
        raise
    return []


def _alarm_lines(alarms: list[Json]) -> list[str]:
    lines = [
        f"{ALARM_NAMES.get(a.get('resource', ''), a.get('resource'))} alarm on node {a.get('node')}"
        for a in alarms
    ]
    return lines or ["(none)"]


def _interface(listener: Json) -> str:
    address = str(listener.get("ip_address"))
    return f"[{address}]" if ":" in address else address


def _listener(listener: Json) -> str:
    protocol = listener.get("protocol", "")
    return f"port: {listener.get('port')}, protocol: {protocol}, purpose: {PURPOSES.get(protocol, protocol)}"


def _version(overview: Json) -> str:
    product = overview.get("product_name") or "RabbitMQ"
    version = overview.get("product_version") or overview.get("rabbitmq_version")
    text = f"{product} {version}"
    if overview.get("erlang_version"):
        text += f" on Erlang {overview['erlang_version']}"
    if product != "RabbitMQ":
        text += f", behaving as RabbitMQ {overview.get('rabbitmq_version')}"
    return text


def _gb(value: Any) -> str:
    return f"{round(value / GB, 4)} gb"


def _write_sections(ctx: Context, sections: list[tuple[str, list[str]]]) -> None:
    blocks = [f"{title}\n\n" + "\n".join(lines) for title, lines in sections if lines]
    ctx.out.write("\n\n".join(blocks) + "\n")


def status(ctx: Context, args: argparse.Namespace) -> None:
    overview = ctx.client.get(api_path("overview"))
    name = overview.get("node")
    node = next((n for n in _nodes(ctx, overview) if n.get("name") == name), {})
    alarms = _alarms(ctx)
    vhosts = ctx.client.get(api_path("vhosts"))
    totals = overview.get("object_totals", {})
    listeners = [entry for entry in overview.get("listeners", []) if entry.get("node") in (None, name)]
    if ctx.formatter == "json":
        facts = {
            "node": name,
            "product_name": overview.get("product_name"),
            "product_version": overview.get("product_version"),
            "rabbitmq_version": overview.get("rabbitmq_version"),
            "erlang_version": overview.get("erlang_version"),
            "os_pid": node.get("os_pid"),
            "uptime": node.get("uptime"),
            "alarms": alarms,
            "mem_used": node.get("mem_used"),
            "mem_limit": node.get("mem_limit"),
            "fd_used": node.get("fd_used"),
            "fd_total": node.get("fd_total"),
            "disk_free": node.get("disk_free"),
            "disk_free_limit": node.get("disk_free_limit"),
            "connection_count": totals.get("connections"),
            "queue_count": totals.get("queues"),
            "virtual_host_count": len(vhosts),
            "listeners": listeners,
        }
        ctx.out.write(json.dumps(facts, separators=(",", ":")) + "\n")
        return
    ctx.say(f"Status of node {name} ...")
    runtime = [
        f"OS PID: {node['os_pid']}" if "os_pid" in node else "",
        f"Uptime (seconds): {node['uptime'] // 1000}" if "uptime" in node else "",
        f"Product name: {overview.get('product_name')}",
        f"Product version: {overview.get('product_version')}",
        f"RabbitMQ version: {overview.get('rabbitmq_version')}",
        f"Node name: {name}",
        f"Erlang configuration: {overview['erlang_full_version']}"
        if "erlang_full_version" in overview
        else "",
    ]
    memory = []
    if "mem_used" in node:
        memory = [
            f"Total memory used: {_gb(node['mem_used'])}",
            f"Memory high watermark: {_gb(node['mem_limit'])}",
        ]
    descriptors = [f"Total: {node['fd_used']}, limit: {node['fd_total']}"] if "fd_used" in node else []
    disk = []
    if "disk_free" in node:
        disk = [
            f"Low free disk space watermark: {_gb(node['disk_free_limit'])}",
            f"Free disk space: {_gb(node['disk_free'])}",
        ]
    _write_sections(
        ctx,
        [
            ("Runtime", [line for line in runtime if line]),
            ("Alarms", _alarm_lines(alarms)),
            ("Memory", memory),
            ("File Descriptors", descriptors),
            ("Free Disk Space", disk),
            (
                "Totals",
                [
                    f"Connection count: {totals.get('connections')}",
                    f"Queue count: {totals.get('queues')}",
                    f"Virtual host count: {len(vhosts)}",
                ],
            ),
            ("Listeners", [f"Interface: {_interface(e)}, {_listener(e)}" for e in listeners]),
        ],
    )


def cluster_status(ctx: Context, args: argparse.Namespace) -> None:
    overview = ctx.client.get(api_path("overview"))
    nodes = _nodes(ctx, overview)
    alarms = _alarms(ctx)
    names = [n.get("name") for n in nodes]
    disk_nodes = [n.get("name") for n in nodes if n.get("type", "disc") == "disc"]
    running = [n.get("name") for n in nodes if n.get("running", True)]
    listeners = overview.get("listeners", [])
    if ctx.formatter == "json":
        facts = {
            "cluster_name": overview.get("cluster_name"),
            "disk_nodes": disk_nodes,
            "running_nodes": running,
            "versions": {name: _version(overview) for name in names},
            "alarms": alarms,
            "listeners": listeners,
        }
        ctx.out.write(json.dumps(facts, separators=(",", ":")) + "\n")
        return
    ctx.say(f"Cluster status of node {overview.get('node')} ...")
    _write_sections(
        ctx,
        [
            ("Basics", [f"Cluster name: {overview.get('cluster_name')}"]),
            ("Disk Nodes", [str(n) for n in disk_nodes]),
            ("Running Nodes", [str(n) for n in running]),
            ("Versions", [f"{name}: {_version(overview)}" for name in names]),
            ("Alarms", _alarm_lines(alarms)),
            (
                "Listeners",
                [f"Node: {e.get('node')}, interface: {_interface(e)}, {_listener(e)}" for e in listeners],
            ),
        ],
    )


VERBS = [
    Verb("status", "Show the node's version, alarms, resources, totals and listeners.", no_arguments, status),
    Verb(
        "cluster_status",
        "Show the cluster's nodes, versions, alarms and listeners.",
        no_arguments,
        cluster_status,
    ),
]
