"""What a ServerConnection reports to the broker after reading bytes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import AMQPError
from .fastpath import Body, Publish

if TYPE_CHECKING:
    from .connection import State


@dataclass(slots=True)
class ConnectionOpened:
    """Handshake done: the client is authenticated and has opened `vhost`."""

    username: str
    vhost: str
    client_properties: dict[str, Any]


@dataclass(slots=True)
class MethodReceived:
    """A method on an open channel (channel.open and channel.close included)."""

    channel: int
    method: Any


@dataclass(slots=True)
class ContentReceived:
    """A basic.publish with its content, complete."""

    channel: int
    publish: Publish
    properties_raw: bytes
    body: Body


@dataclass(slots=True)
class ChannelFailed:
    """The connection closed the channel for a framing-level error; the broker drops the channel."""

    channel: int
    error: AMQPError


@dataclass(slots=True)
class ChannelCloseOk:
    """The client confirmed a channel close the broker started; the channel number is free."""

    channel: int


@dataclass(slots=True)
class ConnectionClosed:
    """The connection is finished: closed by either side, or failed. Nothing more will be read.

    When it failed on something the client sent, `error` is why, `state` where the connection was then
    and `channel` the frame's channel."""

    code: int
    text: str
    by_peer: bool
    error: AMQPError | None = None
    state: State | None = None
    channel: int = 0


Event = (
    ConnectionOpened | MethodReceived | ContentReceived | ChannelFailed | ChannelCloseOk | ConnectionClosed
)
