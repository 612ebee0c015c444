"""The log's level and format, from the command line (`--log-level`, `--log-format`) or the YAML keys
(`log_level`, `log_format`), through the real `leveret` console script."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from pathlib import Path

import pika

from interop.brokers import amqp_ready, free_port
from tests.test_start_failures import LEVERET


def run_broker(tmp_path: Path, *args: str) -> list[str]:
    """Start leveret, connect with pika (named "logged"), publish, drop a second connection's socket,
    stop it with SIGTERM; its stderr lines."""
    port = free_port()
    command = [str(LEVERET), "--port", str(port), "--data-dir", str(tmp_path / "data"), *args]
    with open(tmp_path / "stderr", "w+") as stderr:
        broker = subprocess.Popen(command, cwd=tmp_path, stderr=stderr, stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while not amqp_ready("127.0.0.1", port):
                alive = broker.poll() is None and time.monotonic() < deadline
                assert alive, (tmp_path / "stderr").read_text()
                time.sleep(0.1)
            parameters = pika.URLParameters(f"amqp://guest:guest@127.0.0.1:{port}/")
            parameters.client_properties = {"connection_name": "logged"}
            with pika.BlockingConnection(parameters) as connection:
                channel = connection.channel()
                channel.queue_declare("q")
                for _ in range(100):
                    channel.basic_publish("", "q", b"body")
            dropped = pika.BlockingConnection(pika.URLParameters(f"amqp://guest:guest@127.0.0.1:{port}/"))
            dropped._impl._transport._sock.close()
            time.sleep(0.3)
        finally:
            broker.send_signal(signal.SIGTERM)
            assert broker.wait(30) == 0
        return (tmp_path / "stderr").read_text().splitlines()


def test_text_records_are_one_line_each(tmp_path: Path) -> None:
    lines = run_broker(tmp_path)
    pattern = r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}[+-]\d\d:\d\d \[(debug|info|warning|error)\] \S+: "
    assert all(re.match(pattern, line) for line in lines), lines
    assert any(line.endswith("[info] leveret: Server startup complete") for line in lines), lines
    opened = [line for line in lines if "authenticated and granted access" in line]
    assert len(opened) == 2 and "[info] leveret.connection: connection (127.0.0.1:" in opened[0]
    # The hot path logs nothing: 100 publishes, and only lifecycle records about the connection.
    about_logged = [line for line in lines if "- logged" in line or "client-provided name: logged" in line]
    assert len(about_logged) == 3, about_logged  # named, opened, closed


def test_json_lines_carry_the_connection_fields(tmp_path: Path) -> None:
    records = [json.loads(line) for line in run_broker(tmp_path, "--log-format", "json")]
    assert {"time", "level", "logger", "msg"} <= set(records[0])
    opened = next(r for r in records if "granted access" in r["msg"] and "- logged)" in r["msg"])
    assert opened["level"] == "info" and opened["logger"] == "leveret.connection"
    assert opened["user"] == "guest" and opened["vhost"] == "/"
    assert opened["connection"].endswith(" - logged")
    assert opened["client"]["product"] == "Pika Python Client Library"
    dropped = next(r for r in records if "client unexpectedly closed TCP connection" in r["msg"])
    assert dropped["level"] == "warning"


def test_log_level_flag_hides_lower_levels(tmp_path: Path) -> None:
    lines = run_broker(tmp_path, "--log-level", "warning")
    assert not [line for line in lines if "[info]" in line], lines
    assert [line for line in lines if "[warning]" in line and "client unexpectedly closed" in line], lines


def test_log_level_and_format_from_yaml(tmp_path: Path) -> None:
    config = tmp_path / "leveret.yaml"
    config.write_text("log_level: debug\nlog_format: json\n")
    records = [json.loads(line) for line in run_broker(tmp_path, "--config", str(config))]
    assert any(r["level"] == "debug" and "client properties" in r["msg"] for r in records)


def test_the_flag_wins_over_yaml(tmp_path: Path) -> None:
    config = tmp_path / "leveret.yaml"
    config.write_text("log_level: debug\n")
    lines = run_broker(tmp_path, "--config", str(config), "--log-level", "error")
    assert lines == [], lines
