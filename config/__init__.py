"""Broker configuration: the schema, the YAML loader and RabbitMQ-compatible password hashes."""

from .cluster import Cluster, ClusterNode, Etcd, split_address
from .errors import ConfigError
from .load import load_config
from .passwords import check_password, hash_password
from .schema import (
    Config,
    Limits,
    Listener,
    Listeners,
    ManagementListener,
    Permission,
    Resources,
    TopicPermission,
    User,
)
from .sizes import parse_size

__all__ = [
    "Cluster",
    "ClusterNode",
    "Etcd",
    "split_address",
    "Config",
    "ConfigError",
    "Limits",
    "Listener",
    "Listeners",
    "ManagementListener",
    "Permission",
    "Resources",
    "TopicPermission",
    "User",
    "check_password",
    "hash_password",
    "load_config",
    "parse_size",
]
