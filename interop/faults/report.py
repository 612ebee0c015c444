"""Each fault run's figures, printed and, with LEVERET_FAULTS_REPORT=FILE, appended to FILE."""

from __future__ import annotations

import os
from pathlib import Path

from interop.checker.verdict import Verdict


def report(name: str, verdict: Verdict, note: str = "") -> str:
    line = f"{name}: {verdict.summary()}" + (f" [{note}]" if note else "")
    print(line)
    target = os.environ.get("LEVERET_FAULTS_REPORT")
    if target:
        with Path(target).open("a", encoding="utf-8") as file:
            file.write(line + "\n")
    return line
