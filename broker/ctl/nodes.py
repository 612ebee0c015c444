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
OVERVIEW_FACTS = (
    "product_name",
    "product_version",
    "rabbitmq_version",
    "erlang_version",
    "erlang_full_version",
)
NODE_FACTS = (
    "os_pid",
    "uptime",
    "mem_used",
    "mem_limit",
    "fd_used",
    "fd_total",
    "disk_free",
    "disk_free_limit",
)


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


def _status_facts(ctx: Context) -> Json:
    """What status shows, by the API's names; None for what this broker's API does not give."""
    overview = ctx.client.get(api_path("overview"))
    name = overview.get("node")
    node = next((n for n in _nodes(ctx, overview) if n.get("name") == name), {})
    totals = overview.get("object_totals", {})
    return {
        "node": name,
        **{key: overview.get(key) for key in OVERVIEW_FACTS},
        **{key: node.get(key) for key in NODE_FACTS},
        "alarms": _alarms(ctx),
        "connection_count": totals.get("connections"),
        "queue_count": totals.get("queues"),
        "virtual_host_count": len(ctx.client.get(api_path("vhosts"))),
        "listeners": [e for e in overview.get("listeners", []) if e.get("node") in (None, name)],
    }


def _present(*pairs: tuple[str, Any]) -> list[str]:
    """Lines "label: value" for the values the API gave."""
    return [f"{label}: {value}" for label, value in pairs if value is not None]


def _gb_or_none(value: Any) -> str | None:
    return None if value is None else _gb(value)


def status(ctx: Context, args: argparse.Namespace) -> None:
    facts = _status_facts(ctx)
    if ctx.formatter == "json":
        ctx.out.write(json.dumps(facts, separators=(",", ":")) + "\n")
        return
    ctx.say(f"Status of node {facts['node']} ...")
    uptime = facts["uptime"]
    runtime = _present(
        ("OS PID", facts["os_pid"]),
        ("Uptime (seconds)", None if uptime is None else uptime // 1000),
        ("Product name", facts["product_name"]),
        ("Product version", facts["product_version"]),
        ("RabbitMQ version", facts["rabbitmq_version"]),
        ("Node name", facts["node"]),
        ("Erlang configuration", facts["erlang_full_version"]),
    )
    memory = _present(
        ("Total memory used", _gb_or_none(facts["mem_used"])),
        ("Memory high watermark", _gb_or_none(facts["mem_limit"])),
    )
    descriptors = []
    if facts["fd_used"] is not None:
        limit = "" if facts["fd_total"] is None else f", limit: {facts['fd_total']}"
        descriptors = [f"Total: {facts['fd_used']}{limit}"]
    disk = _present(
        ("Low free disk space watermark", _gb_or_none(facts["disk_free_limit"])),
        ("Free disk space", _gb_or_none(facts["disk_free"])),
    )
    totals = _present(
        ("Connection count", facts["connection_count"]),
        ("Queue count", facts["queue_count"]),
        ("Virtual host count", facts["virtual_host_count"]),
    )
    listeners = [f"Interface: {_interface(e)}, {_listener(e)}" for e in facts["listeners"]]
    _write_sections(
        ctx,
        [
            ("Runtime", runtime),
            ("Alarms", _alarm_lines(facts["alarms"])),
            ("Memory", memory),
            ("File Descriptors", descriptors),
            ("Free Disk Space", disk),
            ("Totals", totals),
            ("Listeners", listeners),
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
