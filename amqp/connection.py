"""The server side of one AMQP connection, sans-IO: bytes in, events out, bytes back.

`receive_data` parses frames, runs the handshake, checks each channel's frame sequence (a method
where content is due, content with no publish: 505 UNEXPECTED_FRAME) and assembles published
content. The broker answers through `send_method`, the fast-path `send_frames`, `close_channel` and
`close`. Nothing here does I/O or reads a clock.
"""

from __future__ import annotations

import enum
import struct
from collections import deque
from collections.abc import Sequence
from typing import Any

from pamqp import commands

from . import fastpath
from .codec import build, decode_method, encode_method, method_ids, method_name
from .constants import (
    ACCESS_REFUSED,
    CHANNEL_ERROR,
    COMMAND_INVALID,
    CONNECTION_FORCED,
    FRAME_BODY,
    FRAME_ERROR,
    FRAME_HEADER,
    FRAME_HEARTBEAT,
    FRAME_METHOD,
    NOT_ALLOWED,
    PRECONDITION_FAILED,
    PROTOCOL_HEADER,
    REPLY_SUCCESS,
    UNEXPECTED_FRAME,
)
from .errors import AMQPError, ChannelError, ConnectionLevelError
from .events import (
    ChannelCloseOk,
    ChannelFailed,
    ConnectionClosed,
    ConnectionOpened,
    ContentReceived,
    Event,
    MethodReceived,
)
from .framing import HEARTBEAT_FRAME, FrameReader
from .handshake import (
    EXTERNAL,
    ConnectionPolicy,
    ServerSettings,
    check_tune_ok,
    negotiated_channel_max,
    parse_sasl_response,
)

# Before tune-ok the client has agreed to no frame size; accept a generous one for start-ok.
_HANDSHAKE_FRAME_MAX = 131072
_CONTENT_HEADER = struct.Struct(">HHQ")
_FRAME_TYPES = frozenset((FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT))
# Distinct (exchange, routing key, flags) combinations remembered per connection; cleared when full.
_PUBLISH_CACHE_SIZE = 1024
# A delivery of more pieces than this carries a body of several frames (three pieces a frame).
_LARGE_CONTENT_PIECES = 32

Channel = commands.Channel
Connection = commands.Connection


class State(enum.Enum):
    AWAIT_HEADER = "awaiting protocol header"
    AWAIT_START_OK = "awaiting connection.start-ok"
    AWAIT_TUNE_OK = "awaiting connection.tune-ok"
    AWAIT_OPEN = "awaiting connection.open"
    OPEN = "open"
    CLOSING = "closing"  # we sent connection.close; waiting for close-ok
    CLOSED = "closed"


class _ChannelState:
    """Frame sequence of one open channel."""

    __slots__ = ("closing", "publish", "properties_raw", "body_size", "body", "received")

    def __init__(self) -> None:
        self.closing = False
        self.publish: fastpath.Publish | None = None
        self.properties_raw: bytes | None = None
        self.body_size = 0
        # A body in one frame is that frame's payload. One split over frames is appended to a bytearray as
        # they come: held once (the allocator grows a large one in place), never joined from its parts, and
        # never allocated ahead of the bytes actually received.
        self.body: bytes | bytearray = b""
        self.received = 0

    def reset_content(self) -> None:
        self.publish = None
        self.properties_raw = None
        self.body = b""
        self.received = 0

    def add_body(self, payload: bytes) -> None:
        """Add one body frame's payload (the caller has checked it fits in the announced size)."""
        if not self.received:
            self.body = payload
        else:
            body = self.body
            if not isinstance(body, bytearray):
                body = self.body = bytearray(body)
            body += payload
        self.received += len(payload)


class ServerConnection:
    def __init__(self, settings: ServerSettings, policy: ConnectionPolicy) -> None:
        self.settings = settings
        self.policy = policy
        self.state = State.AWAIT_HEADER
        self.channel_max = settings.channel_max
        self.frame_max = settings.frame_max
        self.heartbeat = settings.heartbeat
        self.username = ""
        self.mechanism = ""  # the SASL mechanism the client logged in with
        self.vhost = ""
        self.client_properties: dict[str, Any] = {}
        self.refused_header: bytes | None = None  # what a client sent instead of the AMQP 0-9-1 header
        self._reader = FrameReader(_HANDSHAKE_FRAME_MAX)
        self._channels: dict[int, _ChannelState] = {}
        self._out: list[fastpath.Frame] = []
        self._large = False  # a body split over many frames is queued: hand it out a piece at a time
        self._events: deque[Event] = deque()
        self._publish_cache: dict[bytes, fastpath.Publish] = {}

    # ---- output -------------------------------------------------------------------------------

    def data_to_send(self, limit: int | None = None) -> bytes:
        """What is queued for the socket, oldest first: everything, or, once a large body is queued, about
        `limit` bytes of it (more is left for the next call), so that the body is not copied whole."""
        out = self._out
        if not out:
            return b""
        if limit is None or not self._large:
            data = b"".join(out)
            out.clear()
            self._large = False
            return data
        size = taken = 0
        for piece in out:
            size += len(piece)
            taken += 1
            if size >= limit:
                break
        data = b"".join(out[:taken])
        del out[:taken]
        self._large = bool(out)
        return data

    def output_size(self) -> int:
        """Bytes queued for the socket (after `data_to_send`, what it left)."""
        return sum(map(len, self._out)) if self._out else 0

    @property
    def has_output(self) -> bool:
        return bool(self._out)

    def send_method(self, channel: int, method: Any) -> None:
        self._out.append(encode_method(channel, method))

    def send_frames(self, frames: Sequence[fastpath.Frame]) -> None:
        """Pre-encoded frames from the fast path (deliveries, confirms); a large body's frames are views of
        it (fastpath.content_frames)."""
        if len(frames) > _LARGE_CONTENT_PIECES:
            self._large = True
        self._out.extend(frames)

    def send_heartbeat(self) -> None:
        self._out.append(HEARTBEAT_FRAME)

    def client_capability(self, name: str) -> bool:
        capabilities = self.client_properties.get("capabilities") or {}
        return bool(isinstance(capabilities, dict) and capabilities.get(name))

    def close_channel(self, channel: int, error: AMQPError) -> None:
        """Send channel.close for `error`; frames on the channel are dropped until close-ok.

        Dropped, but still checked as RabbitMQ checks them: content due for a publish must come, in order.
        """
        state = self._channels.get(channel)
        if state is None or state.closing or self.state is not State.OPEN:
            return
        state.closing = True
        state.body = b""
        self.send_method(
            channel,
            build(
                Channel.Close,
                reply_code=error.code,
                reply_text=_truncate(error.reply_text),
                class_id=error.class_id,
                method_id=error.method_id,
            ),
        )

    def close(self, error: AMQPError | None = None) -> None:
        """Start closing the connection (200 when no error); reads are ignored until close-ok."""
        if self.state in (State.CLOSING, State.CLOSED):
            return
        if self.state is State.AWAIT_HEADER:
            self.state = State.CLOSED
            return
        code, text = (error.code, error.reply_text) if error else (REPLY_SUCCESS, "Goodbye")
        class_id, method_id = (error.class_id, error.method_id) if error else (0, 0)
        self.send_method(
            0,
            build(
                Connection.Close,
                reply_code=code,
                reply_text=_truncate(text),
                class_id=class_id,
                method_id=method_id,
            ),
        )
        self.state = State.CLOSING
        self._channels.clear()

    def send_blocked(self, reason: str) -> None:
        if self.state is State.OPEN and self.client_capability("connection.blocked"):
            self.send_method(0, build(Connection.Blocked, reason=reason))

    def send_unblocked(self) -> None:
        if self.state is State.OPEN and self.client_capability("connection.blocked"):
            self.send_method(0, build(Connection.Unblocked))

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    # ---- input --------------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Take bytes from the socket; read what they mean with `next_event`.

        After a frame error that leaves no telling where the next frame starts, bytes are dropped:
        connection.close was sent, and the socket closes when the wait for close-ok runs out, as in
        RabbitMQ. Closing at once, with the client's bytes still arriving, would reset the connection
        and could lose the close on its way.
        """
        if self.state is not State.CLOSED and not self._reader.broken:
            self._reader.feed(data)

    def next_event(self) -> Event | None:
        """The next thing the client did, or None when the received bytes are used up.

        One event at a time, so that what the broker sends in answer to an event is queued before
        anything the connection answers to later frames (a channel.close-ok after the confirms of
        the publishes before it).
        """
        fast = self.next_publish()
        if fast is not None:
            return ContentReceived(*fast)
        return self.next_other_event()

    def next_other_event(self) -> Event | None:
        """`next_event` once `next_publish` has returned None."""
        events = self._events
        channel = 0  # the frame's, for the log when it fails the connection
        try:
            while not events:
                if self.state is State.CLOSED:
                    return None
                if self.state is State.AWAIT_HEADER:
                    if not self._read_protocol_header():
                        return None
                    continue
                frame = self._reader.next_frame()
                if frame is None:
                    return None
                channel = frame[1]
                self._handle_frame(*frame, events)
        except ConnectionLevelError as error:
            self._fail(error, channel, events)
        return events.popleft()

    def next_publish(self) -> tuple[int, fastpath.Publish, bytes, bytes] | None:
        """The next event when it is the common well-formed publish, taken in one step (see peek_publish):
        (channel, publish, properties_raw, body). None: call `next_event`, which reads everything else."""
        if self._events or self.state is not State.OPEN:
            return None
        reader = self._reader
        found = reader.peek_publish()
        if found is None:
            return None
        channel, method_payload, properties_raw, body, end = found
        state = self._channels.get(channel)
        if state is None or state.closing or state.publish is not None:
            return None
        if len(body) > self.settings.max_message_size:
            return None
        # Publishers repeat the same exchange, routing key and flags: decode each combination once.
        publish = self._publish_cache.get(method_payload)
        if publish is None:
            try:
                publish = fastpath.decode_publish(method_payload)
            except (ValueError, IndexError, UnicodeDecodeError):
                return None  # the frame-by-frame path reports it
            if len(self._publish_cache) >= _PUBLISH_CACHE_SIZE:
                self._publish_cache.clear()
            self._publish_cache[method_payload] = publish
        reader.advance(end)
        return channel, publish, properties_raw, body

    def connection_lost(self) -> list[Event]:
        """The socket is gone (EOF, reset, heartbeat timeout)."""
        if self.state is State.CLOSED:
            return []
        self.state = State.CLOSED
        return [ConnectionClosed(CONNECTION_FORCED, "connection lost", by_peer=True)]

    def _fail(self, error: AMQPError, channel: int, events: deque[Event]) -> None:
        state = self.state
        if state in (State.CLOSING, State.AWAIT_START_OK):
            # Before start-ok is done RabbitMQ closes the socket without a word (a refused login aside,
            # below). A tune-ok it refuses gets the 530 it means to send (interop/test_tune.py).
            self.state = State.CLOSED
        else:
            self.close(error)
        events.append(ConnectionClosed(error.code, error.reply_text, False, error, state, channel))

    def _read_protocol_header(self) -> bool:
        header = self._reader.take_bytes(len(PROTOCOL_HEADER))
        if header is None:
            return False
        if header != PROTOCOL_HEADER:
            # The spec's answer to a protocol we don't speak: our header, then close.
            self.refused_header = header
            self._out.append(PROTOCOL_HEADER)
            self.state = State.CLOSED
            return False
        self.send_method(
            0,
            build(
                Connection.Start,
                version_major=0,
                version_minor=9,
                server_properties=self.settings.server_properties(),
                mechanisms=" ".join(self.policy.mechanisms()),
                locales="en_US",
            ),
        )
        self.state = State.AWAIT_START_OK
        return True

    def _handle_frame(self, frame_type: int, channel: int, payload: bytes, events: deque[Event]) -> None:
        if frame_type == FRAME_HEARTBEAT:
            if payload:  # RabbitMQ reads a heartbeat with a payload as no frame it knows
                raise ConnectionLevelError(FRAME_ERROR, "heartbeat frame with a payload")
            if channel != 0:
                raise ConnectionLevelError(UNEXPECTED_FRAME, f"heartbeat frame on channel {channel}")
            return
        if frame_type not in _FRAME_TYPES:
            raise ConnectionLevelError(FRAME_ERROR, f"unknown frame type {frame_type}")
        if self.state is State.OPEN and channel != 0:
            self._handle_channel_frame(frame_type, channel, payload, events)
            return
        if frame_type != FRAME_METHOD or channel != 0:
            # Content on channel 0, or any channel used before the connection is open.
            if self.state is State.CLOSING:
                return
            raise ConnectionLevelError(
                UNEXPECTED_FRAME, f"unexpected frame type {frame_type} on channel {channel}"
            )
        self._handle_connection_method(decode_method(payload), events)

    def _handle_connection_method(self, method: Any, events: deque[Event]) -> None:
        state = self.state
        if isinstance(method, Connection.Close):
            self.send_method(0, build(Connection.CloseOk))
            self.state = State.CLOSED
            events.append(ConnectionClosed(method.reply_code or 0, method.reply_text, by_peer=True))
        elif isinstance(method, Connection.CloseOk):
            if state is State.CLOSING:
                self.state = State.CLOSED
                events.append(ConnectionClosed(REPLY_SUCCESS, "closed", by_peer=False))
            elif state is not State.OPEN:
                raise ConnectionLevelError(COMMAND_INVALID, "unexpected connection.close-ok", 10, 51)
            else:
                raise ConnectionLevelError(
                    CHANNEL_ERROR, "unexpected method in connection state running", 10, 51
                )
        elif state is State.CLOSING:
            return
        elif state is State.AWAIT_START_OK and isinstance(method, Connection.StartOk):
            self._start_ok(method)
        elif state is State.AWAIT_TUNE_OK and isinstance(method, Connection.TuneOk):
            self._tune_ok(method)
        elif state is State.AWAIT_OPEN and isinstance(method, Connection.Open):
            self.policy.check_vhost(self.username, method.virtual_host)
            self.vhost = method.virtual_host
            self.send_method(0, build(Connection.OpenOk))
            self.state = State.OPEN
            events.append(ConnectionOpened(self.username, self.vhost, self.client_properties))
        elif state is State.OPEN and isinstance(method, (Connection.Blocked, Connection.Unblocked)):
            return  # a client may tell us it is blocked; nothing to do
        elif state is State.OPEN and isinstance(method, Connection.UpdateSecret):
            self.send_method(0, build(Connection.UpdateSecretOk))
        elif state is State.OPEN:
            # RabbitMQ's answer to any other method on channel 0 of an open connection.
            raise ConnectionLevelError(
                CHANNEL_ERROR, "unexpected method in connection state running", *method_ids(method)
            )
        else:
            raise ConnectionLevelError(
                COMMAND_INVALID, f"unexpected {method_name(method)} while {state.value}", *method_ids(method)
            )

    def _start_ok(self, method: Any) -> None:
        self.client_properties = method.client_properties or {}
        if method.mechanism not in self.policy.mechanisms():
            raise ConnectionLevelError(
                ACCESS_REFUSED, f"unsupported authentication mechanism '{method.mechanism}'", 10, 11
            )
        username, password = parse_sasl_response(method.mechanism, method.response)
        if method.mechanism == EXTERNAL:
            username = self.policy.external_username() or ""
        self.mechanism = method.mechanism
        if not username or not self.policy.authenticate(method.mechanism, username, password):
            error = ConnectionLevelError(
                ACCESS_REFUSED,
                f"Login was refused using authentication mechanism {method.mechanism}. "
                "For details see the broker logfile.",
            )
            if self.client_capability("authentication_failure_close"):
                self.close(error)  # RabbitMQ tells the clients that ask for it why they were refused
            raise error
        self.username = username
        self.send_method(
            0,
            build(
                Connection.Tune,
                channel_max=self.settings.channel_max,
                frame_max=self.settings.frame_max,
                heartbeat=self.settings.heartbeat,
            ),
        )
        self.state = State.AWAIT_TUNE_OK

    def _tune_ok(self, method: Any) -> None:
        check_tune_ok(self.settings, method.channel_max, method.frame_max)
        self.channel_max = negotiated_channel_max(self.settings.channel_max, method.channel_max)
        self.frame_max = method.frame_max
        self.heartbeat = method.heartbeat  # the client's choice, as RabbitMQ takes it
        self._reader.frame_max = self.frame_max
        self.state = State.AWAIT_OPEN

    def _handle_channel_frame(
        self, frame_type: int, channel: int, payload: bytes, events: deque[Event]
    ) -> None:
        state = self._channels.get(channel)
        if frame_type == FRAME_METHOD:
            if state is not None and state.publish is not None:
                raise _content_due(state)
            method = decode_method(payload)
            if state is None:
                self._open_channel(channel, method, events)
            elif state.closing:
                self._method_while_closing(channel, method, events)
            elif type(method) is fastpath.Publish:
                state.publish = method
            elif isinstance(method, Channel.Open):
                raise ConnectionLevelError(CHANNEL_ERROR, "second 'channel.open' seen", 20, 10)
            else:
                if isinstance(method, Channel.Close):
                    self.send_method(channel, build(Channel.CloseOk))
                    del self._channels[channel]
                events.append(MethodReceived(channel, method))
        elif state is None or state.publish is None:
            raise ConnectionLevelError(
                UNEXPECTED_FRAME, "expected method frame, got non method frame instead"
            )
        elif frame_type == FRAME_HEADER:
            if state.properties_raw is not None:
                raise _content_due(state)
            self._content_header(channel, state, payload, events)
        else:  # FRAME_BODY (the frame type is checked before)
            if state.properties_raw is None:
                raise _content_due(state)
            if state.received + len(payload) > state.body_size:
                raise ConnectionLevelError(
                    FRAME_ERROR, f"content body exceeds the announced size {state.body_size}"
                )
            if state.closing:  # a closing channel's content is counted, not kept
                state.received += len(payload)
            else:
                state.add_body(payload)
            if state.received == state.body_size:
                self._content_complete(channel, state, events)

    def _open_channel(self, channel: int, method: Any, events: deque[Event]) -> None:
        if not isinstance(method, Channel.Open):
            raise ConnectionLevelError(CHANNEL_ERROR, "expected 'channel.open'", *method_ids(method))
        # channel_max bounds how many channels are open, not their numbers (rabbit_reader:create_channel):
        # RabbitMQ opens channel 65535 on any connection. 0 is no limit.
        if self.channel_max and len(self._channels) >= self.channel_max:
            raise ConnectionLevelError(
                NOT_ALLOWED,
                f"number of channels opened ({len(self._channels)}) has reached the negotiated channel_max "
                f"({self.channel_max})",
            )
        self._channels[channel] = _ChannelState()
        events.append(MethodReceived(channel, method))

    def _method_while_closing(self, channel: int, method: Any, events: deque[Event]) -> None:
        if type(method) is fastpath.Publish:
            state = self._channels[channel]
            state.publish = method  # its content is still due, and dropped
        elif isinstance(method, Channel.CloseOk):
            del self._channels[channel]
            events.append(ChannelCloseOk(channel))
        elif isinstance(method, Channel.Close):
            # Both sides closed at once: answer, and the channel is done.
            self.send_method(channel, build(Channel.CloseOk))
            del self._channels[channel]
            events.append(ChannelCloseOk(channel))

    def _content_header(
        self, channel: int, state: _ChannelState, payload: bytes, events: deque[Event]
    ) -> None:
        if len(payload) < 14:
            raise ConnectionLevelError(FRAME_ERROR, "content header frame too short")
        class_id, weight, body_size = _CONTENT_HEADER.unpack_from(payload, 0)
        if class_id != 60:
            raise ConnectionLevelError(
                UNEXPECTED_FRAME,
                f"expected content header for class 60, got one for class {class_id} instead",
                60,
                40,
            )
        if weight:
            raise _content_due(state)
        state.properties_raw = payload[12:]
        state.body_size = body_size
        if body_size > self.settings.max_message_size and not state.closing:
            limit = self.settings.max_message_size
            error = ChannelError(
                PRECONDITION_FAILED,
                f"message size {body_size} is larger than configured max size {limit}",
                60,
                40,
            )
            # Closing here, not in the broker, so the body frames still to come are dropped.
            self.close_channel(channel, error)
            events.append(ChannelFailed(channel, error))
        elif body_size == 0:
            self._content_complete(channel, state, events)

    def _content_complete(self, channel: int, state: _ChannelState, events: deque[Event]) -> None:
        if state.closing:
            state.reset_content()
            return
        assert state.publish is not None and state.properties_raw is not None
        events.append(ContentReceived(channel, state.publish, state.properties_raw, state.body))
        state.reset_content()


def _content_due(state: _ChannelState) -> ConnectionLevelError:
    """A frame other than the content header, or body, that the channel's basic.publish awaits."""
    if state.properties_raw is None:
        text = "expected content header for class 60, got non content header frame instead"
    else:
        text = "expected content body, got non content body frame instead"
    return ConnectionLevelError(UNEXPECTED_FRAME, text, 60, 40)


def _truncate(text: str) -> str:
    """reply-text is a short string: at most 255 bytes of UTF-8."""
    raw = text.encode("utf-8")
    return text if len(raw) <= 255 else raw[:255].decode("utf-8", "ignore")
