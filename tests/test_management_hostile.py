"""Hostile requests to the management API's write endpoints: bad JSON, huge bodies, values AMQP cannot
hold, odd names. Each is refused with a 4xx and a JSON body (or, unknown fields being ignored as RabbitMQ
ignores them, accepted), never a 500; the node keeps working."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio

from leveret.broker.management.bodies import MAX_BODY
from leveret.broker.management.server import serve_management
from leveret.broker.node import Node
from leveret.broker.persistence import Persistence
from leveret.broker.server.main import start_node_tasks
from leveret.config import Config, Permission, User, hash_password

GUEST = ("guest", "guest")
WRITES = [
    ("PUT", "/api/exchanges/%2F/hostile-x"),
    ("PUT", "/api/queues/%2F/hostile-q"),
    ("POST", "/api/bindings/%2F/e/amq.direct/q/hostile-q"),
    ("POST", "/api/bindings/%2F/e/amq.direct/e/amq.fanout"),
    ("PUT", "/api/vhosts/hostile-v"),
    ("PUT", "/api/users/hostile-u"),
    ("PUT", "/api/permissions/%2F/guest"),
    ("PUT", "/api/vhost-limits/%2F/max-queues"),
    ("POST", "/api/exchanges/%2F/amq.default/publish"),
    ("POST", "/api/queues/%2F/hostile-q/get"),
    ("POST", "/api/definitions"),
]
PUBLISH = b'"routing_key": "k", "payload": "x", "payload_encoding": "string"'
BODIES = [
    b"not json",
    b"[1, 2]",
    b"null",
    b"12",
    b"[" * 100_000,
    b'{"type": 5, "durable": [], "auto_delete": {}, "arguments": {"a": 1e400}}',
    b'{"arguments": {"x": 1180591620717411303424}}',
    b'{"routing_key": 5, "payload": 5, "payload_encoding": "string", "properties": []}',
    b"{" + PUBLISH + b', "properties": {"headers": {"h": 1e999}}}',
    b"{" + PUBLISH + b', "properties": {"timestamp": 1e300}}',
    b"{" + PUBLISH + b', "properties": {"timestamp": 99999999999999999}}',
    b'{"count": 99999999999999999999, "ackmode": [], "encoding": {}}',
    b'{"password": 5, "tags": 7}',
    b'{"configure": [], "write": null, "read": 1}',
    b'{"value": [1]}',
    b'{"users": 5, "vhosts": [1], "queues": {"a": 1}}',
    b'{"queues": [{"name": 5, "vhost": "/"}], "bindings": [{"source": null}]}',
    b'{"name": "\\ud800"}',
    b"\xff\xfe\x00",
]


@pytest.fixture
async def http(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    users = (User("guest", hash_password("guest"), ("administrator",)),)
    config = Config(data_dir=str(tmp_path / "data"), users=users, permissions=(Permission("guest", "/"),))
    node = Node(config, clock=trio.current_time)
    node.attach_persistence(Persistence(tmp_path / "data"))
    node.persistence.recover(node)  # type: ignore[union-attr]
    async with trio.open_nursery() as nursery:
        await start_node_tasks(nursery, node)  # the group commit answers persistent publishes
        binds = await nursery.start(serve_management, node, "127.0.0.1", 0)
        async with httpx.AsyncClient(base_url=binds[0], auth=GUEST, timeout=30) as client:
            yield client
        nursery.cancel_scope.cancel()


async def test_bad_bodies_never_get_a_500(http: httpx.AsyncClient) -> None:
    assert (await http.put("/api/queues/%2F/hostile-q", json={})).status_code == 201
    refused = 0
    for method, path in WRITES:
        for body in BODIES:
            response = await http.request(
                method, path, content=body, headers={"content-type": "application/json"}
            )
            assert response.status_code < 500, (method, path, body[:80], response.status_code, response.text)
            if response.status_code >= 400:
                refused += 1
                assert set(response.json()) == {"error", "reason"}, (method, path, body[:80])
    assert refused > len(WRITES) * len(BODIES) // 2
    assert (await http.get("/api/overview")).status_code == 200


async def test_a_huge_body_is_refused_with_413(http: httpx.AsyncClient) -> None:
    body = b'{"x": "' + b"a" * MAX_BODY + b'"}'
    response = await http.put("/api/queues/%2F/huge", content=body)
    assert response.status_code == 413 and response.json()["error"] == "bad_request"

    async def chunks() -> AsyncIterator[bytes]:  # no content-length: the reader stops at the limit
        for _ in range(MAX_BODY // 1_000_000 + 2):
            yield b" " * 1_000_000

    response = await http.put("/api/queues/%2F/huge", content=chunks())
    assert response.status_code == 413
    assert (await http.get("/api/queues/%2F/huge")).status_code == 404


async def test_names_are_names_not_paths(http: httpx.AsyncClient, tmp_path: Path) -> None:
    """A queue or vhost named like a path stays an AMQP name: its files are under data_dir, named by hash."""
    for vhost in ("..%2F..%2Fescape", "%2F"):
        if vhost != "%2F":
            assert (await http.put(f"/api/vhosts/{vhost}", json={})).status_code == 201
        response = await http.put(f"/api/queues/{vhost}/..%2F..%2F..%2Fescape", json={"durable": True})
        assert response.status_code == 201
        body = {
            "routing_key": "../../../escape",
            "payload": "x",
            "payload_encoding": "string",
            "properties": {},
        }
        body["properties"] = {"delivery_mode": 2}
        response = await http.post(f"/api/exchanges/{vhost}/amq.default/publish", json=body)
        assert response.json() == {"routed": True}
    names = {q["name"] for q in (await http.get("/api/queues")).json()}
    assert names == {"../../../escape"}
    created = {p.relative_to(tmp_path).parts[0] for p in tmp_path.rglob("*")}
    assert created == {"data"}
    assert not any("escape" in p.name for p in tmp_path.rglob("*"))
