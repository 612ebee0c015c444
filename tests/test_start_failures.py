"""A start that cannot serve: one line on stderr naming what failed, where, and the setting that changes
it, a non-zero exit, no traceback, and the store left as it was. Through the real `leveret` console
script, with ports taken on 127.0.0.1 at run time."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pika
import pytest

from interop.brokers import LeveretBroker, free_port
from tests.certs import TlsFiles, make_tls_files

LEVERET = Path(sys.executable).with_name("leveret")


def leveret(*args: str | Path, cwd: Path, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    assert LEVERET.exists(), f"the console script is not installed: {LEVERET} (pip install -e .)"
    command = [*prefix, str(LEVERET), *map(str, args)]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=60)


def one_line_failure(result: subprocess.CompletedProcess[str], code: int = 1) -> str:
    """The single stderr line of a failed start."""
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("leveret: ")
    return lines[0]


@contextmanager
def busy_port() -> Iterator[int]:
    """A port on 127.0.0.1 some other process listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("certs"))


def test_amqp_port_in_use(tmp_path: Path) -> None:
    with busy_port() as port:
        line = one_line_failure(leveret("--port", port, "--data-dir", tmp_path / "data", cwd=tmp_path))
    assert line == (
        f"leveret: cannot listen for AMQP on 127.0.0.1:{port}: address already in use; "
        "set another port with listeners.amqp.port (--port)"
    )
    assert not (tmp_path / "data").exists()  # the store was never opened


def test_management_port_in_use(tmp_path: Path) -> None:
    with busy_port() as port:
        config = tmp_path / "leveret.yaml"
        config.write_text(
            f"listeners: {{amqp: {{port: {free_port()}}}, management: {{host: 127.0.0.1, port: {port}}}}}\n"
        )
        result = leveret("--config", config, "--data-dir", tmp_path / "data", cwd=tmp_path)
    assert one_line_failure(result) == (
        f"leveret: cannot listen for the management API on 127.0.0.1:{port}: address already in use; "
        "set another port with listeners.management.port"
    )
    assert not (tmp_path / "data").exists()


def test_amqps_port_in_use(tmp_path: Path, certs: TlsFiles) -> None:
    with busy_port() as port:
        config = tmp_path / "leveret.yaml"
        config.write_text(
            f"listeners: {{amqp: {{port: {free_port()}}}, amqps: {{host: 127.0.0.1, port: {port}}}}}\n"
            f"tls: {{certfile: {certs.server_cert}, keyfile: {certs.server_key}}}\n"
        )
        result = leveret("--config", config, "--data-dir", tmp_path / "data", cwd=tmp_path)
    assert one_line_failure(result) == (
        f"leveret: cannot listen for AMQPS on 127.0.0.1:{port}: address already in use; "
        "set another port with listeners.amqps.port"
    )


def test_address_not_of_this_machine(tmp_path: Path) -> None:
    # 192.0.2.0/24 is TEST-NET-1: never assigned to a host; binding to it fails without any traffic.
    result = leveret("--host", "192.0.2.1", "--port", free_port(), "--data-dir", tmp_path / "d", cwd=tmp_path)
    line = one_line_failure(result)
    assert line.startswith("leveret: cannot listen for AMQP on 192.0.2.1:")
    assert line.endswith(
        "cannot assign requested address; set another address with listeners.amqp.host (--host)"
    )


def _without_root_override() -> tuple[str, ...] | None:
    """A command prefix under which permissions apply to this process: none needed unless root, where
    setpriv drops the capabilities that let root past them."""
    if os.geteuid() != 0:
        return ()
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    return (setpriv, "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search")


def test_data_dir_permission_denied(tmp_path: Path) -> None:
    prefix = _without_root_override()
    if prefix is None:
        pytest.skip("running as root without setpriv: permissions cannot be denied")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)  # no writes, even by its owner
    try:
        result = leveret("--port", free_port(), "--data-dir", locked / "data", cwd=tmp_path, prefix=prefix)
    finally:
        locked.chmod(0o700)
    assert one_line_failure(result) == (
        f"leveret: cannot use the data directory {locked / 'data'}: permission denied; "
        "set another directory with data_dir (--data-dir)"
    )


def test_data_dir_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("not a directory")
    result = leveret("--port", free_port(), "--data-dir", tmp_path / "data", cwd=tmp_path)
    assert one_line_failure(result) == (
        f"leveret: cannot use the data directory {tmp_path / 'data'}: it is a file, not a directory; "
        "set another directory with data_dir (--data-dir)"
    )


def test_a_second_broker_on_the_same_data_dir_is_refused(tmp_path: Path) -> None:
    broker = LeveretBroker(tmp_path / "first")
    broker.start()
    try:
        result = leveret("--port", free_port(), "--data-dir", broker.data_dir, cwd=tmp_path)
    finally:
        broker.close()
    assert one_line_failure(result) == (
        f"leveret: the data directory {broker.data_dir} is in use by another broker (pid {broker.pid}); "
        "stop it, or set another directory with data_dir (--data-dir)"
    )


def test_bad_certificate(tmp_path: Path, certs: TlsFiles) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    config = tmp_path / "leveret.yaml"
    config.write_text(
        f"listeners: {{amqp: {{port: {free_port()}}}, amqps: {{host: 127.0.0.1, port: {free_port()}}}}}\n"
        f"tls: {{certfile: {bad}, keyfile: {certs.server_key}}}\n"
    )
    line = one_line_failure(leveret("--config", config, "--data-dir", tmp_path / "data", cwd=tmp_path))
    expected = f"leveret: tls.certfile / tls.keyfile: cannot load {bad} with {certs.server_key}: "
    assert line.startswith(expected)
    assert not (tmp_path / "data").exists()


def test_bad_config(tmp_path: Path) -> None:
    config = tmp_path / "leveret.yaml"
    config.write_text("listeners:\n  amqp: {port: abc}\n")
    line = one_line_failure(leveret("--config", config, cwd=tmp_path), code=2)
    assert line == (
        f"leveret: invalid configuration in {config}: listeners.amqp.port: expected an integer in 1..65535, "
        "got 'abc'"
    )


def test_bad_port_flag(tmp_path: Path) -> None:
    result = leveret("--port", "0", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "leveret: error: argument --port: expected a port in 1..65535, got '0'" in result.stderr


def test_help_shows_every_default(tmp_path: Path) -> None:
    result = leveret("--help", cwd=tmp_path)
    assert result.returncode == 0
    text = " ".join(result.stdout.split())  # argparse wraps lines
    for flag, default in [
        ("--config FILE", "the embedded config/default.yaml"),
        ("--host HOST", "listeners.amqp.host (default: 127.0.0.1 and ::1)"),
        ("--port PORT", "listeners.amqp.port (default: 5672)"),
        ("--data-dir DIR", "data_dir (default: ./leveret-data)"),
        ("--log-level {debug,info,warning,error}", "log_level (default: info)"),
        ("--log-format {text,json}", "(default: text)"),
    ]:
        assert flag in text and default in text, (flag, default, result.stdout)


def test_a_failed_start_leaves_recovery_clean(tmp_path: Path) -> None:
    """Persistent messages, a clean stop, a start that fails on a busy port, a good start: the messages
    come back with redelivered=false, as after the clean stop alone."""
    broker = LeveretBroker(tmp_path)
    broker.start()
    try:
        with pika.BlockingConnection(pika.URLParameters(broker.url)) as connection:
            channel = connection.channel()
            channel.confirm_delivery()
            channel.queue_declare("kept", durable=True)
            for n in range(5):
                channel.basic_publish("", "kept", f"m{n}".encode(), pika.BasicProperties(delivery_mode=2))
        assert broker.stop() == 0
        with busy_port() as port:
            one_line_failure(leveret("--port", port, "--data-dir", broker.data_dir, cwd=tmp_path))
        broker.start()
        with pika.BlockingConnection(pika.URLParameters(broker.url)) as connection:
            channel = connection.channel()
            got = [channel.basic_get("kept", auto_ack=True) for _ in range(5)]
    finally:
        broker.close()
    assert [body for _, _, body in got] == [f"m{n}".encode() for n in range(5)]
    assert [method.redelivered for method, _, _ in got] == [False] * 5


def test_start_failures_are_unwrapped_from_trio_exception_groups() -> None:
    from leveret.broker.cli import start_failures
    from leveret.broker.server.startup import StartError

    busy = StartError("cannot listen for AMQP on 127.0.0.1:5672: address already in use")
    nested = ExceptionGroup("nursery", [ExceptionGroup("nursery", [busy]), busy])
    assert start_failures(nested) == [str(busy)]
    assert start_failures(ExceptionGroup("nursery", [busy, RuntimeError("a bug")])) is None  # traceback
    assert start_failures(OSError("not a start failure")) is None
