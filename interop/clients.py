"""Helpers shared by the interop tests: unique names, pika connections, polling and client subprocesses."""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pika
from pika.adapters.blocking_connection import BlockingChannel

INTEROP = Path(__file__).resolve().parent
REPO = INTEROP.parent
SCRIPTS = INTEROP / "scripts"
NODE_DIR = INTEROP / "node"


def unique(prefix: str) -> str:
    """A name no other test uses, so every test can share one broker."""
    return f"interop-{prefix}-{uuid.uuid4().hex[:12]}"


@contextmanager
def pika_connection(url: str) -> Iterator[pika.BlockingConnection]:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        yield connection
    finally:
        if connection.is_open:
            connection.close()


def queue_depth(channel: BlockingChannel, name: str) -> int:
    return channel.queue_declare(name, passive=True).method.message_count


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def pump_until(
    connection: pika.BlockingConnection,
    predicate: Callable[[], bool],
    timeout: float = 10.0,
    what: str = "condition",
) -> None:
    """wait_until that dispatches the connection's deliveries and callbacks while it waits."""

    def pumped() -> bool:
        connection.process_data_events(0.02)
        return predicate()

    wait_until(pumped, timeout, what)


def client_env(url: str, **extra: str) -> dict[str, str]:
    """The environment of a client subprocess: the broker URL in AMQP_URL and no path into the repo,
    whose `amqp/` folder would shadow PyPI's `amqp` (the transport under kombu and Celery)."""
    env = dict(os.environ, AMQP_URL=url, **extra)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p).resolve() != REPO]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def stage(cwd: Path, *names: str) -> None:
    """Copy client scripts into a working dir outside the repository and run them from there."""
    for name in names:
        shutil.copy(SCRIPTS / name, cwd / name)


def python_client(*args: str) -> list[str]:
    return [sys.executable, "-u", *args]


def run_client(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 60.0) -> str:
    """Run a client to completion; its stdout, or an AssertionError carrying all of its output."""
    with subprocess.Popen(
        args,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            raise AssertionError(
                f"{args} timed out after {timeout}s\nstdout:\n{out}\nstderr:\n{err}"
            ) from None
    if proc.returncode != 0:
        raise AssertionError(f"{args} exited with {proc.returncode}\nstdout:\n{out}\nstderr:\n{err}")
    return out


class ClientProcess:
    """A long-running client (consumer, worker) whose merged stdout/stderr lines the test can wait for."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.args = args
        self.proc = subprocess.Popen(
            args,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.output: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def expect(self, predicate: Callable[[str], bool], timeout: float = 30.0) -> str:
        """Wait for the next output line that satisfies predicate; fail with the whole output if none does."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(
                    f"{self.args}: no expected line within {timeout}s\n{self.transcript()}"
                ) from None
            if line is None:
                self._lines.put(None)
                raise AssertionError(f"{self.args} exited ({self.proc.wait()})\n{self.transcript()}")
            self.output.append(line)
            if predicate(line):
                return line

    def transcript(self) -> str:
        """Everything the client printed so far, including lines no expect() has looked at yet."""
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                break
            if line is None:
                self._lines.put(None)
                break
            self.output.append(line)
        return "\n".join(self.output)

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL the client and anything it forked."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        self.kill()


@contextmanager
def client_process(args: list[str], cwd: Path, env: dict[str, str]) -> Iterator[ClientProcess]:
    """Start a client and stop it when the block ends, failed test or not."""
    client = ClientProcess(args, cwd, env)
    try:
        yield client
    finally:
        client.close()
