"""Imports point one way: amqp/ knows nothing of the broker, and only broker/server/ may use trio; broker/ctl/
is a client that knows the broker only through its HTTP API."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _modules(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("path", _modules("amqp"), ids=lambda p: str(p.relative_to(ROOT)))
def test_amqp_is_sans_io(path: Path) -> None:
    forbidden = {"trio", "socket", "asyncio", "leveret.broker", "leveret.config"}
    bad = {
        name
        for name in _imports(path)
        if name.split(".")[0] in forbidden
        or name.startswith("leveret.broker")
        or name.startswith("leveret.config")
    }
    assert not bad, f"{path} imports {bad}"


@pytest.mark.parametrize("path", _modules("config"), ids=lambda p: str(p.relative_to(ROOT)))
def test_config_depends_on_nothing_of_ours(path: Path) -> None:
    bad = {name for name in _imports(path) if name.startswith(("trio", "leveret.broker", "leveret.amqp"))}
    assert not bad, f"{path} imports {bad}"


@pytest.mark.parametrize(
    "path",
    [
        p
        for p in _modules("broker")
        if "server" not in p.parts and "management" not in p.parts and p.name != "cli.py"
    ],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_broker_domain_never_imports_trio(path: Path) -> None:
    bad = {
        name
        for name in _imports(path)
        if name.split(".")[0] in {"trio", "asyncio", "socket"} or name.startswith("leveret.broker.server")
    }
    assert not bad, f"{path} imports {bad}"


@pytest.mark.parametrize("path", _modules("broker/management"), ids=lambda p: str(p.relative_to(ROOT)))
def test_management_runs_on_trio_beside_the_server(path: Path) -> None:
    """The HTTP API reads the domain and runs on trio (hypercorn's trio worker, Starlette through anyio):
    never asyncio, and never the AMQP server's internals (broker/server/ starts it, not the other way)."""
    bad = {
        name
        for name in _imports(path)
        if name.split(".")[0] in {"asyncio", "uvicorn"} or name.startswith("leveret.broker.server")
    }
    assert not bad, f"{path} imports {bad}"


@pytest.mark.parametrize(
    "path",
    [p for p in _modules("broker") if "management" not in p.parts and "server" not in p.parts],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_domain_never_imports_management(path: Path) -> None:
    bad = {name for name in _imports(path) if name.startswith("leveret.broker.management")}
    assert not bad, f"{path} imports {bad}"


@pytest.mark.parametrize("path", _modules("broker/cluster"), ids=lambda p: str(p.relative_to(ROOT)))
def test_cluster_logic_is_sans_io(path: Path) -> None:
    """Placement, membership, records and the metadata view are pure: etcd's client (httpx) and the
    cluster's tasks live in broker/server/ (etcd.py, cluster.py)."""
    bad = {
        name
        for name in _imports(path)
        if name.split(".")[0] in {"trio", "asyncio", "socket", "httpx", "anyio"}
        or name.startswith(("leveret.broker.server", "leveret.broker.session"))
    }
    assert not bad, f"{path} imports {bad}"


# The ctl client may use the standard library, httpx and the configuration loader (for --config), nothing of
# the broker: it reaches a broker only over HTTP, so it works the same against RabbitMQ.
CTL_ALLOWED = {"httpx", "leveret.config"}


@pytest.mark.parametrize("path", _modules("broker/ctl"), ids=lambda p: str(p.relative_to(ROOT)))
def test_ctl_is_an_http_client_only(path: Path) -> None:
    bad = {
        name
        for name in _imports(path)
        if name.split(".")[0] not in sys.stdlib_module_names and name not in CTL_ALLOWED
    }
    assert not bad, f"{path} imports {bad}"


@pytest.mark.parametrize(
    "path",
    [p for p in _modules("broker") if "ctl" not in p.relative_to(ROOT).parts],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_the_broker_never_imports_ctl(path: Path) -> None:
    bad = {name for name in _imports(path) if name.startswith("leveret.broker.ctl")}
    assert not bad, f"{path} imports {bad}"
