"""What every verb gets: the API client, where to write, and the global options."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

from .client import ManagementClient

FORMATTERS = ("table", "json")


@dataclass
class Context:
    client: ManagementClient
    out: TextIO
    vhost: str
    formatter: str  # "table" or "json"
    quiet: bool  # no informational lines ("Listing queues ...")
    headers: bool  # a header row over tables
    timeout: float

    def say(self, line: str) -> None:
        """An informational line, as rabbitmqctl prints before doing something; -q drops it."""
        if not self.quiet:
            self.out.write(line + "\n")


@dataclass(frozen=True)
class Verb:
    name: str
    summary: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[Context, argparse.Namespace], None]
    description: str = ""


def no_arguments(parser: argparse.ArgumentParser) -> None:
    pass
