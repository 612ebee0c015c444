"""A raw AMQP client on a trio stream, frame by frame: to drive the real server over loopback sockets."""

from __future__ import annotations

import struct
from typing import Any

import trio
from pamqp import body as pamqp_body
from pamqp import frame, header
from pamqp.commands import Basic, Connection
from pamqp.heartbeat import Heartbeat

from leveret.amqp.constants import PROTOCOL_HEADER


class TrioClient:
    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buffer = b""

    async def send(self, channel: int, method: Any) -> None:
        await self.stream.send_all(frame.marshal(method, channel))

    async def publish(self, body: bytes, queue: str, channel: int = 1) -> None:
        data = frame.marshal(Basic.Publish(exchange="", routing_key=queue), channel)
        data += frame.marshal(header.ContentHeader(0, len(body), Basic.Properties()), channel)
        data += frame.marshal(pamqp_body.ContentBody(body), channel)
        await self.stream.send_all(data)

    async def receive(self) -> Any:
        """The next frame's value, or None at EOF."""
        while True:
            if len(self.buffer) >= 7:
                size = struct.unpack(">I", self.buffer[3:7])[0]
                if len(self.buffer) >= size + 8:
                    consumed, _, value = frame.unmarshal(self.buffer)
                    self.buffer = self.buffer[consumed:]
                    return value
            data = await self.stream.receive_some(65536)
            if not data:
                return None
            self.buffer += data

    async def receive_method(self) -> Any:
        """The next frame that is not a heartbeat."""
        while isinstance(value := await self.receive(), Heartbeat):
            pass
        return value

    async def handshake(self, heartbeat: int = 0, capabilities: dict[str, bool] | None = None) -> None:
        await self.stream.send_all(PROTOCOL_HEADER)
        assert isinstance(await self.receive(), Connection.Start)
        await self.send(
            0,
            Connection.StartOk(
                client_properties={"capabilities": capabilities or {}},
                mechanism="PLAIN",
                response="\0guest\0guest",
                locale="en_US",
            ),
        )
        tune = await self.receive()
        assert isinstance(tune, Connection.Tune)
        await self.send(
            0, Connection.TuneOk(channel_max=tune.channel_max, frame_max=131072, heartbeat=heartbeat)
        )
        await self.send(0, Connection.Open(virtual_host="/"))
        assert isinstance(await self.receive(), Connection.OpenOk)
