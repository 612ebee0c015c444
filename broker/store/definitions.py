"""Durable definitions (exchanges, queues, bindings, and later users and vhosts) in one JSON file.

Saved whole and atomically: a temporary file is written and fsynced, renamed over the old one, and the
directory fsynced, so a crash leaves either the old definitions or the new ones, never a mix.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .segments import fsync_directory


class DefinitionsError(Exception):
    """The definitions file cannot be used; the message says which file and why, for the operator."""


class DefinitionsStore:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def load(self) -> dict[str, Any]:
        """The saved definitions; {} when none were ever saved."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError) as exc:
            raise DefinitionsError(f"definitions file {self.path} cannot be read: {exc}") from None
        try:
            definitions = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DefinitionsError(
                f"definitions file {self.path} is corrupt: {exc.msg} at line {exc.lineno} column {exc.colno}"
            ) from None
        if not isinstance(definitions, dict):
            found = type(definitions).__name__
            raise DefinitionsError(f"definitions file {self.path} is corrupt: a JSON {found}, not an object")
        return definitions

    def save(self, definitions: dict[str, Any]) -> None:
        """Replace the saved definitions atomically. Blocking (two fsyncs)."""
        data = json.dumps(definitions, indent=1, ensure_ascii=False).encode()
        temporary = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, self.path)
        fsync_directory(self.path.parent)
