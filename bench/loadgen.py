"""Run the C load generator (loadgen.c) and read its one-line JSON result."""

from __future__ import annotations

import json
import select
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# Past its own deadline, a load generator gets this long to close down before the bench calls it hung.
GRACE = 60.0
MARKS = ("go", "end")  # stderr lines that open and close the measured window


class LoadgenError(RuntimeError):
    pass


def _parse(stdout: str, stderr: str, returncode: int | None) -> dict[str, Any]:
    line = stdout.strip().splitlines()[0] if stdout.strip() else ""
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        why = f"loadgen exited with {returncode} and no result; stderr: {stderr.strip()[-500:]}"
        raise LoadgenError(why) from exc


def run(binary: Path, port: int, args: list[str], seconds: float,
        on_mark: Callable[[str], None] = lambda mark: None) -> dict[str, Any]:
    """One run that should take `seconds`; on_mark gets "go" and "end" as the measured window opens/closes."""
    command = [str(binary), "--host", "127.0.0.1", "--port", str(port), *args]
    deadline = time.monotonic() + seconds + GRACE
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        other: list[str] = []
        # The result (stdout) is one short line written at exit: reading stderr first cannot deadlock.
        while select.select([proc.stderr], [], [], max(deadline - time.monotonic(), 0))[0]:
            line = proc.stderr.readline()
            if not line:
                break
            if line.strip() in MARKS:
                on_mark(line.strip())
            else:
                other.append(line)
        try:
            proc.wait(max(deadline - time.monotonic(), 0))
        except subprocess.TimeoutExpired:
            proc.kill()
            raise LoadgenError(f"loadgen still running {seconds + GRACE:.0f}s after start, killed: "
                               f"{' '.join(command)}") from None
        return _parse(proc.stdout.read(), "".join(other), proc.returncode)


@contextmanager
def idle_connections(binary: Path, port: int, count: int, seconds: float) -> Iterator[dict[str, Any]]:
    """Hold `count` open connections (one channel each) for the block; opening them may take `seconds`."""
    command = [str(binary), "--host", "127.0.0.1", "--port", str(port), "--mode", "idle",
               "--connections", str(count)]
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        # The first line comes once every connection is open (or one failed).
        if not select.select([proc.stdout], [], [], seconds + GRACE)[0]:
            raise LoadgenError(f"{count} connections still not open {seconds + GRACE:.0f}s after start")
        result = _parse(proc.stdout.readline(), "", proc.poll())
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    try:
        yield result
    finally:
        proc.stdin.close()
        try:
            proc.wait(GRACE)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
