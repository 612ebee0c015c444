"""The `cluster:` section: validation with dotted paths, and what `--node` selects."""

from pathlib import Path

import pytest

from leveret.broker.cli import build_config, parse_args
from leveret.config import ConfigError, Listener, ManagementListener, load_config, split_address

THREE_NODES = """
cluster:
  nodes:
    - name: a
      amqp: "127.0.0.1:5701"
      peer: "127.0.0.1:25701"
      management: "127.0.0.1:15701"
      data_dir: /tmp/a
    - {name: b, amqp: "127.0.0.1:5702", peer: "127.0.0.1:25702"}
    - {name: c, amqp: "[::1]:5703", peer: "[::1]:25703"}
  etcd:
    endpoints: ["http://127.0.0.1:2379", "http://127.0.0.1:2479"]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cluster.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def errors_of(path: Path, **overrides: object) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path, overrides=overrides)
    return caught.value.errors


def test_no_cluster_section_is_a_single_node() -> None:
    assert load_config().cluster is None


def test_node_takes_its_listeners_and_data_dir_from_its_entry(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, THREE_NODES), overrides={"cluster.node": "a"})
    assert config.cluster is not None and config.cluster.node == "a"
    assert config.listeners.amqp == Listener("127.0.0.1", 5701)
    assert config.listeners.management == ManagementListener("127.0.0.1", 15701)
    assert config.data_dir == "/tmp/a"
    other = load_config(write(tmp_path, THREE_NODES), overrides={"cluster.node": "c"})
    assert other.listeners.amqp == Listener("::1", 5703)
    assert other.listeners.management is None
    assert other.data_dir == "./leveret-data"


def test_defaults_and_replication_factor_capped_at_node_count(tmp_path: Path) -> None:
    cluster = load_config(write(tmp_path, THREE_NODES), overrides={"cluster.node": "b"}).cluster
    assert cluster is not None
    assert (cluster.replication_factor, cluster.lease_ttl, cluster.etcd.prefix) == (3, 2, "/leveret/")
    two = THREE_NODES.replace('    - {name: c, amqp: "[::1]:5703", peer: "[::1]:25703"}\n', "")
    capped = load_config(write(tmp_path, two), overrides={"cluster.node": "b"}).cluster
    assert capped is not None and capped.effective_replication_factor == 2


def test_every_error_at_once_with_dotted_paths(tmp_path: Path) -> None:
    text = """
cluster:
  nodes:
    - {name: a, amqp: "127.0.0.1:5701", peer: "127.0.0.1:25701"}
    - {name: a, amqp: "127.0.0.1:5701", peer: "nope"}
    - {name: c, amqp: "127.0.0.1:5703", peer: "127.0.0.1:99999", management: "127.0.0.1:25701"}
  etcd:
    endpoints: ["http://127.0.0.1:2379", "ftp://x", "http://127.0.0.1:2379"]
  lease_ttl: 1
"""
    assert sorted(errors_of(write(tmp_path, text), **{"cluster.node": "x"})) == sorted(
        [
            "cluster.etcd.endpoints[1]: expected an etcd URL such as 'http://127.0.0.1:2379', got 'ftp://x'",
            "cluster.etcd.endpoints[2]: duplicate endpoint 'http://127.0.0.1:2379'",
            "cluster.lease_ttl: expected an integer in 2..3600, got 1",
            "cluster.nodes[1].name: duplicate node name 'a'",
            "cluster.nodes[1].amqp: duplicate address '127.0.0.1:5701'",
            "cluster.nodes[1].peer: expected an address 'host:port' (IPv6 as '[::1]:port'), got 'nope'",
            "cluster.nodes[2].peer: expected an address 'host:port' (IPv6 as '[::1]:port'), "
            "got '127.0.0.1:99999'",
            "cluster.nodes[2].management: duplicate address '127.0.0.1:25701'",
            "cluster.node: no node named 'x' in cluster.nodes (known: a, a, c)",
        ]
    )


def test_failover_timings_default_and_validated(tmp_path: Path) -> None:
    cluster = load_config(write(tmp_path, THREE_NODES), overrides={"cluster.node": "a"}).cluster
    assert cluster is not None
    timings = (cluster.leader_call_timeout, cluster.publish_hold, cluster.consumer_cancel_delay)
    assert timings == (5.0, 5.0, 10.0)
    tuned = THREE_NODES + "  leader_call_timeout: 2.5\n  publish_hold: 4\n  consumer_cancel_delay: 30\n"
    cluster = load_config(write(tmp_path, tuned), overrides={"cluster.node": "a"}).cluster
    assert cluster is not None
    assert (cluster.leader_call_timeout, cluster.publish_hold, cluster.consumer_cancel_delay) == (2.5, 4, 30)
    bad = THREE_NODES + "  leader_call_timeout: 0\n  publish_hold: -1\n  consumer_cancel_delay: soon\n"
    assert sorted(errors_of(write(tmp_path, bad), **{"cluster.node": "a"})) == [
        "cluster.consumer_cancel_delay: expected a number > 0, got 'soon'",
        "cluster.leader_call_timeout: expected a number > 0, got 0",
        "cluster.publish_hold: expected a number > 0, got -1",
    ]


def test_a_cluster_needs_its_node_named(tmp_path: Path) -> None:
    assert errors_of(write(tmp_path, THREE_NODES)) == [
        "cluster.node: missing: start the node with --node NAME, a name in cluster.nodes"
    ]


def test_missing_sections_and_unknown_keys(tmp_path: Path) -> None:
    text = "cluster:\n  nodes: []\n  replicas: 3\n"
    assert sorted(errors_of(write(tmp_path, text))) == [
        "cluster.etcd: missing",
        "cluster.nodes: expected at least one node",
        "cluster.replicas: unknown key",
    ]


def test_command_line_node(tmp_path: Path) -> None:
    path = write(tmp_path, THREE_NODES)
    config = build_config(parse_args(["--config", str(path), "--node", "b"]))
    assert config.listeners.amqp == Listener("127.0.0.1", 5702)
    with pytest.raises(ConfigError) as caught:
        build_config(parse_args(["--node", "b"]))  # the embedded default has no cluster
    assert "cluster.nodes: missing" in caught.value.errors


@pytest.mark.parametrize(
    "text, expected",
    [
        ("127.0.0.1:5672", ("127.0.0.1", 5672)),
        ("rabbit1:5672", ("rabbit1", 5672)),
        ("[::1]:5672", ("::1", 5672)),
        ("::1:5672", None),
        ("[nope]:1", None),
        ("host:0", None),
        (":5672", None),
        ("host", None),
        ("host:port", None),
    ],
)
def test_split_address(text: str, expected: object) -> None:
    assert split_address(text) == expected


def test_empty_endpoint_list(tmp_path: Path) -> None:
    text = THREE_NODES.replace(
        'endpoints: ["http://127.0.0.1:2379", "http://127.0.0.1:2479"]', "endpoints: []"
    )
    assert errors_of(write(tmp_path, text), **{"cluster.node": "a"}) == [
        "cluster.etcd.endpoints: expected a non-empty list of etcd URLs, got a list"
    ]
