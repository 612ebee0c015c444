"""Install what the bench needs (Debian packages) and build the C load generator into a cache dir."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.procfs import raise_nofile
from interop.brokers import rabbitmq_server_script

SOURCE = Path(__file__).with_name("loadgen.c")
LIBRABBITMQ_HEADERS = (Path("/usr/include/amqp.h"), Path("/usr/include/rabbitmq-c/amqp.h"))
CFLAGS = ("-O2", "-Wall", "-Wextra", "-pthread")


class ToolchainError(RuntimeError):
    pass


def apt_install(*packages: str) -> str | None:
    """Install Debian packages; returns why not, or None on success."""
    if shutil.which("apt-get") is None:
        return "apt-get is not available"
    if os.geteuid() != 0:
        return f"not root: run `sudo apt-get install -y {' '.join(packages)}`"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    command = ["apt-get", "install", "-y", "-q", *packages]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        # A stale package index is the usual cause; refresh it once and retry.
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
        done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        return f"`{' '.join(command)}` failed: {done.stderr.strip()[-500:]}"
    return None


def ensure_rabbitmq() -> str | None:
    """Path of RabbitMQ's start script, installing the package if needed; None (with a message) if absent."""
    script = rabbitmq_server_script()
    if script is None:
        why = apt_install("rabbitmq-server")
        script = rabbitmq_server_script()
        if script is None:
            print(f"bench: RabbitMQ is not installed and could not be ({why}); measuring Leveret alone, "
                  "without ratios.", file=sys.stderr)
    return script


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "leveret-bench"


def build_loadgen() -> Path:
    """Compile loadgen.c once per source version (the binary's name carries the source hash)."""
    if not any(header.exists() for header in LIBRABBITMQ_HEADERS):
        why = apt_install("librabbitmq-dev")
        if why is not None:
            raise ToolchainError(f"librabbitmq-dev is needed to build the load generator: {why}")
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        raise ToolchainError("no C compiler: install gcc (apt-get install -y gcc)")
    source = SOURCE.read_bytes()
    binary = cache_dir() / f"loadgen-{hashlib.sha256(source).hexdigest()[:12]}"
    if binary.exists():
        return binary
    binary.parent.mkdir(parents=True, exist_ok=True)
    partial = binary.with_suffix(".tmp")
    done = subprocess.run([compiler, *CFLAGS, str(SOURCE), "-lrabbitmq", "-o", str(partial)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise ToolchainError(f"building {SOURCE.name} failed:\n{done.stderr}")
    partial.rename(binary)
    return binary


@dataclass(frozen=True)
class Toolchain:
    """What a bench command needs before it starts a broker."""

    loadgen: Path
    rabbitmq: str | None  # RabbitMQ's start script; None when it is not installed (or not wanted)
    nofile: int  # the open-files limit the brokers and load generators inherit

    @property
    def kinds(self) -> list[str]:
        """The brokers to measure: Leveret, and RabbitMQ when there is one."""
        return ["leveret"] + (["rabbitmq"] if self.rabbitmq else [])


def prepare(program: str, rabbitmq: bool = True) -> Toolchain | None:
    """Raise the open-files limit, build the load generator and find (or install) RabbitMQ; None, after
    saying why on stderr under `program`'s name, when the load generator cannot be built."""
    nofile = raise_nofile()
    try:
        binary = build_loadgen()
    except ToolchainError as exc:
        print(f"{program}: {exc}", file=sys.stderr)
        return None
    return Toolchain(binary, ensure_rabbitmq() if rabbitmq else None, nofile)
