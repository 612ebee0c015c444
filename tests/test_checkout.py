"""The checkout's `leveret/` is the installed package's tree: it runs and imports from the repository root."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run_at_root(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_the_package_imports_from_the_checkout_root() -> None:
    code = "import leveret.broker.vhost as v, leveret.amqp.framing, leveret.config; print(v.__file__)"
    done = _run_at_root("-c", code)
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()) == ROOT / "leveret" / "broker" / "vhost.py"


def test_python_dash_m_leveret_runs_from_the_checkout_root() -> None:
    done = _run_at_root("-m", "leveret", "--version")
    assert done.returncode == 0, done.stderr
    assert "leveret" in done.stdout.lower()


def test_the_links_point_at_the_top_level_folders() -> None:
    for name in ("amqp", "broker", "config"):
        link = ROOT / "leveret" / name
        assert link.is_symlink(), f"{link} should link to ../{name}"
        assert link.resolve() == ROOT / name
