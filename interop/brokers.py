"""Throwaway brokers for the interop suite: Leveret (the default) or a private RabbitMQ node.

Every broker listens on 127.0.0.1 only, on ports picked at run time, with its state in a temp dir.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import yaml

from leveret.config import hash_password

HOST = "127.0.0.1"
# The 0-9-1 protocol header; a broker answers it with connection.start.
PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
# Method frame on channel 0 (type 1, channel 0), then after the 4-byte size: class 10, method 10.
CONNECTION_START_PREFIX = (b"\x01\x00\x00", b"\x00\x0a\x00\x0a")
RABBITMQ_SCRIPT_CANDIDATES = ("/usr/lib/rabbitmq/bin/rabbitmq-server",)


class BrokerStartError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def amqp_ready(host: str, port: int) -> bool:
    """True once the port answers the protocol header with connection.start, i.e. it speaks AMQP."""
    try:
        with socket.create_connection((host, port), timeout=1) as sock:
            sock.sendall(PROTOCOL_HEADER)
            data = b""
            while len(data) < 11:
                chunk = sock.recv(11 - len(data))
                if not chunk:
                    return False
                data += chunk
    except OSError:
        return False
    return data[:3] == CONNECTION_START_PREFIX[0] and data[7:11] == CONNECTION_START_PREFIX[1]


def port_listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def tail(path: Path, limit: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except FileNotFoundError:
        return f"({path} does not exist)"


def rabbitmq_server_script() -> str | None:
    """The Debian package's real start script (the /usr/sbin wrapper would switch to the rabbitmq user)."""
    for candidate in RABBITMQ_SCRIPT_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("rabbitmq-server")


@dataclass(frozen=True)
class ResourceLimits:
    """Resource alarm thresholds in bytes (None: the broker's default); each broker gets its own spelling."""

    memory_high_watermark: int | None = None
    disk_free_limit: int | None = None
    # Leveret's paging budget (RabbitMQ has none: its queues page by their own rules).
    message_memory_budget: int | None = None


DEFAULT_LIMITS = ResourceLimits()


@dataclass(frozen=True)
class TopicRule:
    """A topic permission: routing-key patterns on one topic exchange in vhost "/"."""

    exchange: str
    write: str = ".*"
    read: str = ".*"


@dataclass(frozen=True)
class ExtraUser:
    """A user besides guest, with permissions on vhost "/" (all by default), topic permissions and
    RabbitMQ user tags."""

    name: str
    password: str
    tags: tuple[str, ...] = ()
    configure: str = ".*"
    write: str = ".*"
    read: str = ".*"
    topics: tuple[TopicRule, ...] = ()

    def permission(self) -> dict[str, str]:
        return {"user": self.name, "vhost": "/", "configure": self.configure, "write": self.write,
                "read": self.read}

    def topic_permissions(self) -> list[dict[str, str]]:
        return [{"user": self.name, "vhost": "/", "exchange": t.exchange, "write": t.write, "read": t.read}
                for t in self.topics]


def all_users(extra: tuple[ExtraUser, ...]) -> tuple[ExtraUser, ...]:
    return (ExtraUser("guest", "guest", ("administrator",)), *extra)


@dataclass(frozen=True)
class TlsSettings:
    """An amqps listener: the server's PEM files, the CA that client certificates are checked against, and
    RabbitMQ's verify / fail_if_no_peer_cert."""

    certfile: Path
    keyfile: Path
    cacertfile: Path
    verify_peer: bool = False
    fail_if_no_peer_cert: bool = False
    # The EXTERNAL mechanism (RabbitMQ's rabbitmq_auth_mechanism_ssl) offered beside PLAIN and AMQPLAIN, the
    # username taken from the client certificate's "common_name" or "distinguished_name"; None: off.
    external_login_from: str | None = None


class Broker:
    """A broker process: start, stop (SIGTERM), kill (SIGKILL) and restart on the same port and data."""

    kind = ""
    start_timeout = 30.0
    stop_timeout = 30.0

    def __init__(
        self,
        workdir: Path,
        limits: ResourceLimits = DEFAULT_LIMITS,
        tls: TlsSettings | None = None,
        *,
        management: bool = False,
        users: tuple[ExtraUser, ...] = (),
        ipv6: bool = False,
    ) -> None:
        self.limits = limits
        self.tls = tls
        self.users = users
        # Also listen on the IPv6 loopback, same port (RabbitMQ: listeners.tcp.N; Leveret: a list of hosts).
        self.ipv6 = ipv6
        self.host = HOST
        self.port = free_port()
        self.tls_port = free_port() if tls is not None else None
        # The management HTTP API's port (RabbitMQ's rabbitmq_management plugin), when asked for.
        self.management_port = free_port() if management else None
        self.workdir = workdir
        self.data_dir = workdir / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.stdout_path = workdir / "stdout.log"
        self.stderr_path = workdir / "stderr.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._logs: list[IO[bytes]] = []

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{self.host}:{self.port}/"

    @property
    def ipv6_url(self) -> str:
        assert self.ipv6, "broker started without the IPv6 loopback"
        return f"amqp://guest:guest@[::1]:{self.port}/"

    @property
    def management_url(self) -> str:
        assert self.management_port is not None, "broker started without management"
        return f"http://{self.host}:{self.management_port}"

    @property
    def metrics_url(self) -> str:
        """Prometheus metrics: Leveret serves them on the management listener."""
        return f"{self.management_url}/metrics"

    @property
    def pid(self) -> int:
        assert self._proc is not None, "broker not started"
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return dict(os.environ)

    def diagnostics(self) -> str:
        return f"--- stderr ---\n{tail(self.stderr_path)}\n--- stdout ---\n{tail(self.stdout_path)}"

    def log_text(self) -> str:
        """The broker's log so far (Leveret logs to stderr)."""
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def start(self) -> None:
        assert not self.running, "broker already running"
        self._close_logs()
        self._logs = [open(self.stdout_path, "ab"), open(self.stderr_path, "ab")]
        # Own session, so kill() reaches every process the broker forks.
        self._proc = subprocess.Popen(
            self.command(),
            cwd=self.workdir,
            env=self.environment(),
            stdin=subprocess.DEVNULL,
            stdout=self._logs[0],
            stderr=self._logs[1],
            start_new_session=True,
        )
        deadline = time.monotonic() + self.start_timeout
        while not amqp_ready(self.host, self.port):
            if self._proc.poll() is not None:
                raise BrokerStartError(
                    f"{self.kind} exited with {self._proc.returncode} before accepting AMQP on "
                    f"{self.host}:{self.port}\n{self.diagnostics()}"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise BrokerStartError(
                    f"{self.kind} did not accept AMQP on {self.host}:{self.port} within "
                    f"{self.start_timeout:.0f}s\n{self.diagnostics()}"
                )
            time.sleep(0.1)
        # RabbitMQ starts its plugins after the AMQP listener.
        while self.management_port is not None and not port_listening(self.host, self.management_port):
            if time.monotonic() > deadline:
                self.kill()
                message = f"{self.kind}: nothing listens on the management port"
                raise BrokerStartError(f"{message}\n{self.diagnostics()}")
            time.sleep(0.1)

    def stop(self) -> int:
        """SIGTERM and wait; returns the exit code. A broker that ignores SIGTERM is killed and reported."""
        if self._proc is None:
            return 0
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                message = f"{self.kind} ignored SIGTERM for {self.stop_timeout:.0f}s; killed it"
                raise TimeoutError(message) from None
        self._kill_group()
        return self._proc.returncode

    def kill(self) -> None:
        """SIGKILL the broker and everything it forked, as a crash would."""
        if self._proc is None:
            return
        self._kill_group()
        self._proc.wait()

    def restart(self) -> None:
        if self.running:
            self.stop()
        self.start()

    def close(self) -> None:
        """Finalizer: stop the broker whatever state it is in."""
        try:
            if self.running:
                self.stop()
            else:
                self._kill_group()
        finally:
            self._close_logs()

    def _kill_group(self) -> None:
        assert self._proc is not None
        try:
            os.killpg(self._proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def _close_logs(self) -> None:
        for log in self._logs:
            log.close()
        self._logs = []


class LeveretBroker(Broker):
    kind = "leveret"

    def command(self) -> list[str]:
        data = str(self.data_dir)
        command = [sys.executable, "-m", "leveret", "--port", str(self.port), "--data-dir", data]
        settings: dict[str, object] = {}
        listeners: dict[str, object] = {}
        if self.ipv6:
            listeners["amqp"] = {"host": [self.host, "::1"]}
        else:
            command += ["--host", self.host]
        resources = {
            key: str(value)  # a string: a plain number would be read as a fraction of memory
            for key, value in vars(self.limits).items()
            if value is not None
        }
        if resources:
            settings["resources"] = resources
        if self.management_port is not None:
            listeners["management"] = {"host": self.host, "port": self.management_port}
        if self.users:
            users = all_users(self.users)
            settings["users"] = [
                {"name": u.name, "password": u.password, "tags": list(u.tags),
                 "loopback_only": u.name == "guest"}
                for u in users
            ]
            settings["permissions"] = [u.permission() for u in users]
            settings["topic_permissions"] = [t for u in users for t in u.topic_permissions()]
        if self.tls is not None:
            listeners["amqps"] = {"host": self.host, "port": self.tls_port}
            settings["tls"] = {
                "certfile": str(self.tls.certfile),
                "keyfile": str(self.tls.keyfile),
                "cacertfile": str(self.tls.cacertfile),
                "verify": "verify_peer" if self.tls.verify_peer else "verify_none",
                "fail_if_no_peer_cert": self.tls.fail_if_no_peer_cert,
            }
            if self.tls.external_login_from is not None:
                settings["auth_mechanisms"] = ["PLAIN", "AMQPLAIN", "EXTERNAL"]
                settings["ssl_cert_login_from"] = self.tls.external_login_from
        if listeners:
            settings["listeners"] = listeners
        if settings:
            config = self.workdir / "leveret.yaml"
            config.write_text(yaml.safe_dump(settings))
            command += ["--config", str(config)]
        return command


class RabbitMQBroker(Broker):
    """A private RabbitMQ node with its own epmd, cookie, mnesia and logs; nothing of the system install."""

    kind = "rabbitmq"
    start_timeout = 90.0

    def __init__(
        self,
        workdir: Path,
        script: str,
        limits: ResourceLimits = DEFAULT_LIMITS,
        tls: TlsSettings | None = None,
        *,
        management: bool = False,
        users: tuple[ExtraUser, ...] = (),
        ipv6: bool = False,
    ) -> None:
        super().__init__(workdir, limits, tls, management=management, users=users, ipv6=ipv6)
        self.script = script
        self.dist_port = free_port()
        self.epmd_port = free_port()
        self.nodename = f"interop{self.port}@localhost"
        self.pid_file = workdir / "rabbit.pid"
        self.log_dir = workdir / "log"
        self.prometheus_port: int | None = None
        plugins = ["rabbitmq_consistent_hash_exchange"]
        if management:
            plugins += ["rabbitmq_management", "rabbitmq_prometheus"]
        if tls is not None and tls.external_login_from is not None:
            plugins.append("rabbitmq_auth_mechanism_ssl")
        (workdir / "enabled_plugins").write_text(f"[{','.join(plugins)}].\n")
        settings: dict[str, object] = {
            "vm_memory_high_watermark.absolute": limits.memory_high_watermark,
            "disk_free_limit.absolute": limits.disk_free_limit,
        }
        if self.management_port is not None:
            settings["management.tcp.ip"] = self.host
            settings["management.tcp.port"] = self.management_port
            # Queue counts reach the management API with the stats events (every 5 s by default).
            settings["collect_statistics_interval"] = 250
            # RabbitMQ serves Prometheus metrics from another plugin on its own port.
            self.prometheus_port = free_port()
            settings["prometheus.tcp.ip"] = self.host
            settings["prometheus.tcp.port"] = self.prometheus_port
        if ipv6:
            # Instead of RABBITMQ_NODE_IP_ADDRESS, which would override these.
            settings["listeners.tcp.1"] = f"{self.host}:{self.port}"
            settings["listeners.tcp.2"] = f"::1:{self.port}"
        if users:
            settings["load_definitions"] = self._write_definitions(all_users(users))
        if tls is not None:
            settings.update({
                "listeners.ssl.1": f"{self.host}:{self.tls_port}",
                "ssl_options.certfile": tls.certfile,
                "ssl_options.keyfile": tls.keyfile,
                "ssl_options.cacertfile": tls.cacertfile,
                "ssl_options.verify": "verify_peer" if tls.verify_peer else "verify_none",
                "ssl_options.fail_if_no_peer_cert": str(tls.fail_if_no_peer_cert).lower(),
            })
            if tls.external_login_from is not None:
                settings.update({
                    "auth_mechanisms.1": "PLAIN",
                    "auth_mechanisms.2": "AMQPLAIN",
                    "auth_mechanisms.3": "EXTERNAL",
                    "ssl_cert_login_from": tls.external_login_from,
                })
        # At-least-once dead-letters that found no route are retried on this timer (3 minutes by default):
        # a second, as Leveret retries (broker/queues/outbox.py), so that tests need not wait minutes.
        (workdir / "advanced.config").write_text(
            "[{rabbit, [{dead_letter_worker_publisher_confirm_timeout, 1000}]}].\n"
        )
        (workdir / "rabbitmq.conf").write_text(
            "".join(f"{key} = {value}\n" for key, value in settings.items() if value is not None)
        )
        self._epmd: subprocess.Popen[bytes] | None = None

    def _write_definitions(self, users: tuple[ExtraUser, ...]) -> Path:
        """The users as a definitions file loaded at boot; guest is listed too, as with definitions RabbitMQ
        may skip creating it."""
        definitions = {
            "vhosts": [{"name": "/"}],
            "users": [
                {
                    "name": u.name,
                    "password_hash": hash_password(u.password),
                    "hashing_algorithm": "rabbit_password_hashing_sha256",
                    "tags": ",".join(u.tags),
                }
                for u in users
            ],
            "permissions": [u.permission() for u in users],
            "topic_permissions": [t for u in users for t in u.topic_permissions()],
        }
        path = self.workdir / "definitions.json"
        path.write_text(json.dumps(definitions))
        return path

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.prometheus_port}/metrics"

    @property
    def pid(self) -> int:
        """The Erlang VM's pid (the started process is the shell wrapper that forwards SIGTERM)."""
        return int(self.pid_file.read_text().strip())

    def command(self) -> list[str]:
        return [self.script]

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        # NOTIFY_SOCKET would make the script exec the VM directly as if under systemd.
        env.pop("NOTIFY_SOCKET", None)
        work = self.workdir
        env.update(
            HOME=str(work),  # the Erlang cookie lands here, not in the real home
            RABBITMQ_CONF_ENV_FILE=str(work / "rabbitmq-env.conf"),
            RABBITMQ_CONFIG_FILE=str(work / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(work / "advanced.config"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(work / "enabled_plugins"),
            RABBITMQ_PLUGINS_EXPAND_DIR=str(work / "plugins-expand"),
            RABBITMQ_MNESIA_BASE=str(self.data_dir),
            RABBITMQ_LOG_BASE=str(self.log_dir),
            RABBITMQ_PID_FILE=str(self.pid_file),
            RABBITMQ_NODENAME=self.nodename,
            RABBITMQ_DIST_PORT=str(self.dist_port),
            ERL_EPMD_PORT=str(self.epmd_port),
            ERL_EPMD_ADDRESS=self.host,
            # Loopback-only distribution, and never a stray epmd daemon we would not own.
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=(
                "-kernel inet_dist_use_interface {127,0,0,1} -start_epmd false"
            ),
        )
        if not self.ipv6:
            env.update(RABBITMQ_NODE_IP_ADDRESS=self.host, RABBITMQ_NODE_PORT=str(self.port))
        return env

    def diagnostics(self) -> str:
        log = self.log_dir / f"{self.nodename}.log"
        return f"{super().diagnostics()}\n--- {log.name} ---\n{tail(log)}"

    def log_text(self) -> str:
        log = self.log_dir / f"{self.nodename}.log"
        return log.read_text(errors="replace") if log.exists() else ""

    def start(self) -> None:
        self._start_epmd()
        super().start()

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self._epmd is not None:
                self._epmd.terminate()
                self._epmd.wait(10)

    def _start_epmd(self) -> None:
        if self._epmd is not None and self._epmd.poll() is None:
            return
        epmd = shutil.which("epmd")
        if epmd is None:
            raise BrokerStartError("epmd (package erlang-base) is not installed")
        self._epmd = subprocess.Popen(
            [epmd, "-port", str(self.epmd_port), "-address", self.host],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while not port_listening(self.host, self.epmd_port):
            if self._epmd.poll() is not None or time.monotonic() > deadline:
                raise BrokerStartError(f"epmd did not listen on {self.host}:{self.epmd_port}")
            time.sleep(0.05)
