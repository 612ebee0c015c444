"""A client-side AMQP peer built on pamqp, to talk to the sans-IO server with real bytes, no sockets."""

from __future__ import annotations

from typing import Any

from pamqp import body as pamqp_body
from pamqp import commands, frame, header
from pamqp.commands import Basic, Channel, Connection

from leveret.amqp.constants import PROTOCOL_HEADER


class ClientPeer:
    """Encodes what a client sends; decodes what the server sent back into pamqp frames."""

    def __init__(self, server: Any) -> None:
        # `server` has receive_data(bytes) and data_to_send() -> bytes: a ConnectionSession, or a
        # ServerConnection wrapped by `ServerConnectionDriver`.
        self.server = server
        self.received: list[tuple[int, Any]] = []
        self._pending = b""

    def send(self, data: bytes) -> list[tuple[int, Any]]:
        self.server.receive_data(data)
        return self.read()

    def read(self) -> list[tuple[int, Any]]:
        self._pending += self.server.data_to_send()
        frames = []
        while self._pending:
            if self._pending.startswith(b"AMQP"):
                frames.append((0, self._pending[:8]))
                self._pending = self._pending[8:]
                continue
            try:
                consumed, channel, value = frame.unmarshal(self._pending)
            except Exception:
                break  # incomplete frame: wait for more
            self._pending = self._pending[consumed:]
            frames.append((channel, value))
        self.received.extend(frames)
        return frames

    def method(self, channel: int, method: Any) -> list[tuple[int, Any]]:
        return self.send(frame.marshal(method, channel))

    def publish(
        self,
        channel: int,
        body: bytes,
        *,
        exchange: str = "",
        routing_key: str = "",
        mandatory: bool = False,
        properties: commands.Basic.Properties | None = None,
        frame_max: int = 131072,
    ) -> list[tuple[int, Any]]:
        data = frame.marshal(
            Basic.Publish(exchange=exchange, routing_key=routing_key, mandatory=mandatory), channel
        )
        data += frame.marshal(header.ContentHeader(0, len(body), properties or Basic.Properties()), channel)
        chunk = frame_max - 8
        for start in range(0, len(body), chunk):
            data += frame.marshal(pamqp_body.ContentBody(body[start : start + chunk]), channel)
        return self.send(data)

    def handshake(
        self,
        *,
        username: str = "guest",
        password: str = "guest",
        vhost: str = "/",
        capabilities: dict[str, bool] | None = None,
        heartbeat: int = 0,
    ) -> None:
        start = self.send(PROTOCOL_HEADER)
        assert isinstance(start[-1][1], Connection.Start), start
        properties = {
            "capabilities": capabilities
            or {"consumer_cancel_notify": True, "authentication_failure_close": True}
        }
        tune = self.method(
            0,
            Connection.StartOk(
                client_properties=properties,
                mechanism="PLAIN",
                response=f"\0{username}\0{password}",
                locale="en_US",
            ),
        )
        assert isinstance(tune[-1][1], Connection.Tune), tune
        self.method(0, Connection.TuneOk(channel_max=2047, frame_max=131072, heartbeat=heartbeat))
        opened = self.method(0, Connection.Open(virtual_host=vhost))
        assert isinstance(opened[-1][1], Connection.OpenOk), opened

    def open_channel(self, number: int = 1) -> None:
        reply = self.method(number, Channel.Open())
        assert isinstance(reply[-1][1], Channel.OpenOk), reply


def methods(frames: list[tuple[int, Any]]) -> list[Any]:
    """Only the method frames' pamqp objects, in order."""
    return [value for _, value in frames if isinstance(value, commands.base.Frame)]
