"""load_config: a file (or the embedded default) plus overrides, validated into a Config."""

import dataclasses
import os
from collections.abc import Mapping
from importlib.resources import files

from . import document
from .cluster import split_address
from .errors import ConfigError
from .overrides import apply_overrides
from .schema import Config, Listener, ManagementListener
from .validate import build


def load_config(
    path: str | os.PathLike[str] | None = None, *, overrides: Mapping[str, object] | None = None
) -> Config:
    """The configuration in `path` (the embedded default.yaml if None) with `overrides` applied.

    `overrides` maps dotted paths to values, e.g. {"listeners.amqp.port": 5673}. Raises ConfigError
    listing every problem found.
    """
    if path is None:
        source = "default configuration"
        data = document.parse(files(__package__).joinpath("default.yaml").read_bytes(), source)
    else:
        source = os.fspath(path)
        data = document.parse(document.read_file(path), source)
    # An empty file, or one holding only comments, means every default.
    if data is None:
        data = {}
    errors: list[str] = []
    if overrides and isinstance(data, Mapping):
        data = apply_overrides(data, overrides, errors)
    config = build(Config, data, errors)
    if config is None or errors:
        raise ConfigError(errors, source)
    return with_node_entry(config)


def with_node_entry(config: Config) -> Config:
    """In a cluster, this node listens where its `cluster.nodes` entry says (and keeps its data there)."""
    if config.cluster is None:
        return config
    entry = config.cluster.this_node
    host, port = split_address(entry.amqp)  # type: ignore[misc]  # validated
    listeners = dataclasses.replace(config.listeners, amqp=Listener(host, port))
    if entry.management is not None:
        host, port = split_address(entry.management)  # type: ignore[misc]
        listeners = dataclasses.replace(listeners, management=ManagementListener(host, port))
    data_dir = entry.data_dir if entry.data_dir is not None else config.data_dir
    return dataclasses.replace(config, listeners=listeners, data_dir=data_dir)
