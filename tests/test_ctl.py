"""leveretctl without a broker: the command line, where it finds the API, rabbitmqctl's value rendering, and
the one-line errors when nothing answers. Its verbs against real brokers are in interop/test_ctl.py."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from leveret.broker.ctl.endpoint import Endpoint, resolve
from leveret.broker.ctl.errors import CtlError
from leveret.broker.ctl.main import VERBS, run
from leveret.broker.ctl.output import cell, write_json, write_table


def ctl(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def closed_port() -> int:
    """A loopback port that nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A loopback port that accepts connections and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield int(sock.getsockname()[1])


# ---- values and tables ---------------------------------------------------------------------------------


def test_values_are_rendered_as_rabbitmqctl_renders_them() -> None:
    assert cell(True) == "true" and cell(False) == "false"
    assert cell(None) == ""
    assert cell(["monitoring", "policymaker"]) == "[monitoring, policymaker]"
    assert cell([]) == "[]" and cell({}) == "[]"
    arguments = {"x-dead-letter-exchange": "dlx", "x-foo": True, "x-max-length": 10}
    assert cell(arguments) == '[{"x-dead-letter-exchange","dlx"},{"x-foo",true},{"x-max-length",10}]'
    nested = {"product": "pika", "capabilities": {"basic.nack": True}}
    assert cell(nested) == '[{"product","pika"},{"capabilities",[{"basic.nack",true}]}]'


def test_a_table_has_a_header_only_over_rows() -> None:
    out = io.StringIO()
    write_table(out, ["name", "messages"], [{"name": "q1", "messages": 3}, {"name": "", "messages": 0}])
    assert out.getvalue() == "name\tmessages\nq1\t3\n\t0\n"
    empty = io.StringIO()
    write_table(empty, ["name", "messages"], [])
    assert empty.getvalue() == ""


def test_json_is_rabbitmqctls_streaming_layout_with_typed_tables() -> None:
    out = io.StringIO()
    rows = [{"name": "q1", "arguments": {"x-max-length": 10, "x-b": 2**40}}, {"name": "q2", "arguments": {}}]
    write_json(out, ["name", "arguments"], rows)
    assert out.getvalue() == (
        '[\n{"name":"q1","arguments":[["x-max-length","signedint",10],["x-b","long",1099511627776]]}\n'
        ',{"name":"q2","arguments":[]}\n]\n'
    )
    assert json.loads(out.getvalue())[0]["name"] == "q1"
    empty = io.StringIO()
    write_json(empty, ["name"], [])
    assert empty.getvalue() == "[\n]\n"


# ---- the command line ----------------------------------------------------------------------------------


@pytest.mark.parametrize("verb", [v.name for v in VERBS])
def test_every_verb_has_help(verb: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run([verb, "--help"])
    assert exit_info.value.code == 0
    usage = capsys.readouterr().out
    assert usage.startswith(f"usage: leveretctl {verb}")
    assert "--formatter" in usage and "--host" in usage


def test_help_verb_describes_a_verb(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        run(["help", "list_queues"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps the lines
    assert "messages_unacknowledged," in text and "(default: name messages)" in text
    assert ctl("help", "no_such_verb")[0] == 64


def test_the_verb_list_is_rabbitmqctls() -> None:
    names = {v.name for v in VERBS}
    assert names >= {
        "list_queues", "list_exchanges", "list_bindings", "list_connections", "list_channels",
        "list_consumers", "list_users", "list_vhosts", "list_permissions", "list_policies",
        "add_user", "delete_user",
        "change_password", "set_user_tags", "set_permissions", "clear_permissions", "add_vhost",
        "delete_vhost", "purge_queue", "delete_queue", "export_definitions", "import_definitions",
        "set_policy", "clear_policy", "status", "cluster_status", "close_connection",
        "set_operator_policy", "clear_operator_policy", "list_operator_policies",
        "set_user_limits", "clear_user_limits", "list_user_limits",
    }  # fmt: skip


def test_a_bad_command_line_exits_64(capsys: pytest.CaptureFixture[str]) -> None:
    assert ctl()[0] == 64
    with pytest.raises(SystemExit) as exit_info:
        run(["no_such_verb"])
    assert exit_info.value.code == 64
    with pytest.raises(SystemExit) as exit_info:
        run(["add_vhost"])
    assert exit_info.value.code == 64
    assert "Error: the following arguments are required: vhost" in capsys.readouterr().err


def test_an_unknown_column_is_refused_before_any_request(closed_port: int) -> None:
    code, out, err = ctl("--port", str(closed_port), "list_queues", "name,bogus", "messages")
    assert code == 64 and out == ""
    assert err.startswith("Error: list_queues: info key(s) bogus are not supported; one of: arguments, ")


def test_global_options_go_before_or_after_the_verb(closed_port: int) -> None:
    before = ctl("--port", str(closed_port), "-q", "list_users")
    after = ctl("list_users", "-q", "--port", str(closed_port))
    assert before == after
    assert before[0] == 69 and f"127.0.0.1:{closed_port}" in before[2]


# ---- where the API is ----------------------------------------------------------------------------------


def test_the_default_endpoint_is_rabbitmqs() -> None:
    assert resolve(None, None, None, None, None, environ={}) == Endpoint(
        "http://127.0.0.1:15672", "guest", "guest"
    )


def test_the_environment_url_gives_host_port_prefix_and_credentials() -> None:
    environ = {"LEVERET_CTL_URL": "http://ops:s%40cret@broker.local:15673/rabbit/"}
    assert resolve(None, None, None, None, None, environ) == Endpoint(
        "http://broker.local:15673/rabbit", "ops", "s@cret"
    )
    # Flags win over the URL, each on its own.
    assert resolve(None, 9999, "admin", None, None, environ) == Endpoint(
        "http://broker.local:9999/rabbit", "admin", "s@cret"
    )
    with pytest.raises(CtlError) as error:
        resolve(None, None, None, None, None, {"LEVERET_CTL_URL": "broker.local:15672"})
    assert error.value.exit_code == 64


def test_a_config_files_management_listener_is_used(tmp_path: Path) -> None:
    config = tmp_path / "leveret.yaml"
    config.write_text("listeners:\n  management: {host: 0.0.0.0, port: 15999}\n")
    environ = {"LEVERET_CTL_URL": "http://elsewhere:1"}
    # A wildcard listener is reached through loopback; --config wins over the environment.
    endpoint = resolve(None, None, None, None, str(config), environ)
    assert endpoint == Endpoint("http://127.0.0.1:15999", "guest", "guest")
    ipv6 = tmp_path / "ipv6.yaml"
    ipv6.write_text("listeners:\n  management: {host: '::1', port: 15999}\n")
    assert resolve(None, None, None, None, str(ipv6), {}).base_url == "http://[::1]:15999"
    several = tmp_path / "several.yaml"
    several.write_text("listeners:\n  management: {host: ['10.9.8.7', '::1'], port: 15999}\n")
    assert resolve(None, None, None, None, str(several), {}).base_url == "http://10.9.8.7:15999"
    default = tmp_path / "default.yaml"  # the default hosts: 127.0.0.1 and ::1
    default.write_text("listeners:\n  management: {port: 15999}\n")
    assert resolve(None, None, None, None, str(default), {}).base_url == "http://127.0.0.1:15999"


def test_a_config_file_without_management_is_a_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "leveret.yaml"
    config.write_text("listeners:\n  amqp: {port: 5673}\n")
    code, out, err = ctl("--config", str(config), "list_queues")
    assert code == 78
    assert err == (
        f"Error: {config} has no listeners.management: the management API is off in that configuration\n"
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text("listeners:\n  management: {port: nope}\n")
    code, _, err = ctl("--config", str(bad), "list_queues")
    assert code == 78 and "listeners.management.port" in err


# ---- nothing answers -----------------------------------------------------------------------------------


def test_an_unreachable_broker_is_one_line_and_exit_69(closed_port: int) -> None:
    code, out, err = ctl("--port", str(closed_port), "list_queues")
    assert code == 69 and out == ""
    assert err == (
        f"Error: cannot reach the management API at http://127.0.0.1:{closed_port} (connection refused); "
        "is listeners.management set?\n"
    )


def test_a_broker_that_never_answers_times_out(silent_server: int) -> None:
    code, out, err = ctl("--port", str(silent_server), "--timeout", "0.5", "status")
    assert code == 69
    assert err == (
        f"Error: cannot reach the management API at http://127.0.0.1:{silent_server} "
        "(no answer within 0.5 s); is listeners.management set?\n"
    )


CONSOLE_SCRIPTS = Path(sys.executable).parent


@pytest.mark.parametrize(
    "command",
    [
        [sys.executable, "-m", "leveret.broker.ctl"],
        [sys.executable, "-m", "leveret", "ctl"],
        [str(CONSOLE_SCRIPTS / "leveretctl")],
        [str(CONSOLE_SCRIPTS / "leveret"), "ctl"],
    ],
    ids=["module", "python -m leveret ctl", "leveretctl", "leveret ctl"],
)
def test_the_commands_run_as_processes(command: list[str], closed_port: int) -> None:
    if not Path(command[0]).exists():
        pytest.skip(f"{command[0]} is not installed (pip install -e .)")
    result = subprocess.run(
        [*command, "--port", str(closed_port), "list_vhosts"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 69 and result.stdout == ""
    assert result.stderr.startswith("Error: cannot reach the management API at http://127.0.0.1:")
