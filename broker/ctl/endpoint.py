"""Where the management API is and whom to log in as.

The first of these that is given wins: --host/--port, the --config file's listeners.management, the
LEVERET_CTL_URL environment variable (http://user:password@host:port, optionally with a path prefix), and
RabbitMQ's default, http://127.0.0.1:15672. Credentials: --username/--password, then the URL's, then
guest/guest.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from leveret.config import ConfigError, load_config

from .errors import EX_CONFIG, CtlError, UsageError

ENV_URL = "LEVERET_CTL_URL"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 15672
DEFAULT_CREDENTIALS = ("guest", "guest")
# A listener bound to every interface is reached through loopback.
WILDCARD_HOSTS = {"0.0.0.0", "::", ""}


@dataclass(frozen=True)
class Endpoint:
    base_url: str  # scheme://host:port[/prefix], without a trailing slash
    username: str
    password: str


@dataclass(frozen=True)
class _Location:
    scheme: str = "http"
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    prefix: str = ""
    username: str | None = None
    password: str | None = None


def resolve(
    host: str | None,
    port: int | None,
    username: str | None,
    password: str | None,
    config_path: str | None,
    environ: Mapping[str, str] = os.environ,
) -> Endpoint:
    location = _Location()
    if config_path is not None:
        location = _from_config(config_path)
    elif environ.get(ENV_URL):
        location = _from_url(environ[ENV_URL])
    scheme, prefix = location.scheme, location.prefix
    host = host if host is not None else location.host
    port = port if port is not None else location.port
    user = username if username is not None else location.username or DEFAULT_CREDENTIALS[0]
    if password is None:
        password = location.password if location.password is not None else DEFAULT_CREDENTIALS[1]
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return Endpoint(f"{scheme}://{netloc}{prefix}", user, password)


def _from_url(url: str) -> _Location:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"{ENV_URL} must look like http://user:password@host:port, not {url!r}")
    try:
        port = parts.port
    except ValueError:
        raise UsageError(f"{ENV_URL} has a bad port: {url!r}") from None
    return _Location(
        scheme=parts.scheme,
        host=parts.hostname,
        port=port if port is not None else (443 if parts.scheme == "https" else DEFAULT_PORT),
        prefix=parts.path.rstrip("/"),
        username=unquote(parts.username) if parts.username is not None else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )


def _from_config(path: str) -> _Location:
    try:
        config = load_config(path)
    except ConfigError as error:
        raise CtlError(f"invalid configuration: {error}", EX_CONFIG) from None
    except OSError as error:
        raise CtlError(f"cannot read {path}: {error.strerror or error}", EX_CONFIG) from None
    listener = config.listeners.management
    if listener is None:
        message = f"{path} has no listeners.management: the management API is off in that configuration"
        raise CtlError(message, EX_CONFIG)
    # The first address it listens on; one bound to every interface is reached through loopback.
    host = listener.hosts[0] if listener.hosts else DEFAULT_HOST
    return _Location(host=DEFAULT_HOST if host in WILDCARD_HOSTS else host, port=listener.port)
