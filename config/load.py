"""load_config: a file (or the embedded default) plus overrides, validated into a Config."""

import os
from collections.abc import Mapping
from importlib.resources import files

from . import document
from .errors import ConfigError
from .overrides import apply_overrides
from .schema import Config
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
    return config
