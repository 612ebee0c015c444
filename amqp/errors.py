"""Protocol errors: raised deep in the code, answered once.

Domain code raises `ChannelError(PRECONDITION_FAILED, "...")`; the session turns it into channel.close,
and a `ConnectionLevelError` into connection.close, naming the method that caused it.
"""

from __future__ import annotations

from .constants import REPLY_TEXTS


class AMQPError(Exception):
    """An error the broker answers with a close method carrying `code` and `text`."""

    def __init__(self, code: int, text: str, class_id: int = 0, method_id: int = 0) -> None:
        super().__init__(code, text)
        self.code = code
        self.text = text
        self.class_id = class_id
        self.method_id = method_id

    @property
    def reply_text(self) -> str:
        """RabbitMQ's reply-text: the code's name, a dash, then the explanation."""
        name = REPLY_TEXTS.get(self.code, "ERROR")
        return f"{name} - {self.text}" if self.text else name

    def __str__(self) -> str:
        return self.reply_text


class ChannelError(AMQPError):
    """Closes the channel the offending method arrived on."""


class ConnectionLevelError(AMQPError):
    """Closes the whole connection."""
