"""The broker's log on stderr: plain one-line records as RabbitMQ writes them, or JSON lines.

    2026-01-02 03:04:05.678901+00:00 [info] leveret.connection: accepting AMQP connection (...)
    {"time": "2026-01-02 03:04:05.678901+00:00", "level": "info", "logger": "leveret.connection", ...}

A JSON record also carries the fields its caller gave as `extra` (the client log's connection, user,
vhost, channel, reply_code...), so a log shipper need not parse the message.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime
from typing import IO, Any

# The attributes every LogRecord has; the others came from `extra`.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def _time(record: logging.LogRecord) -> str:
    """Local time with its offset, to the microsecond, as RabbitMQ's log writes it."""
    return datetime.fromtimestamp(record.created).astimezone().isoformat(sep=" ", timespec="microseconds")


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = f"{_time(record)} [{record.levelname.lower()}] {record.name}: {record.getMessage()}"
        if record.exc_info:
            # A bug's traceback follows its record; every other record is one line.
            line = f"{line}\n{self.formatException(record.exc_info)}"
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _time(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update((key, value) for key, value in vars(record).items() if key not in _STANDARD)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure_logging(level: str, log_format: str, stream: IO[str] | None = None) -> None:
    """Send every record at `level` and above to `stream` (stderr) in `log_format` ("text" or "json")."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper()))
