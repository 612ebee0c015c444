"""Method frames: the hot ones through the struct fast path, all others through pamqp."""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from pamqp import base, commands
from pamqp import frame as pamqp_frame

from . import fastpath
from .constants import NOT_IMPLEMENTED, SYNTAX_ERROR
from .errors import ConnectionLevelError

_FAST_DECODERS: dict[int, Callable[[bytes], Any]] = {
    fastpath.BASIC_PUBLISH: fastpath.decode_publish,
    fastpath.BASIC_ACK: fastpath.decode_ack,
    fastpath.BASIC_NACK: fastpath.decode_nack,
    fastpath.BASIC_REJECT: fastpath.decode_reject,
}


def decode_method(payload: bytes) -> Any:
    """A method object: a fastpath tuple for the hot methods, a pamqp command for the rest."""
    if len(payload) < 4:
        raise ConnectionLevelError(SYNTAX_ERROR, "method frame too short")
    key = fastpath.method_key(payload)
    fast = _FAST_DECODERS.get(key)
    try:
        if fast is not None:
            return fast(payload)
        factory = commands.INDEX_MAPPING.get(key)
        if factory is None:
            raise ConnectionLevelError(
                NOT_IMPLEMENTED,
                f"unknown method class {key >> 16} method {key & 0xFFFF}",
                key >> 16,
                key & 0xFFFF,
            )
        method = factory()
        method.unmarshal(payload[4:])
        return method
    except ConnectionLevelError:
        raise
    except (struct.error, ValueError, IndexError, UnicodeDecodeError, TypeError) as exc:
        raise ConnectionLevelError(
            SYNTAX_ERROR, f"malformed method frame: {exc}", key >> 16, key & 0xFFFF
        ) from exc


def method_ids(method: Any) -> tuple[int, int]:
    """(class_id, method_id) of a decoded method, for the close that names what caused an error."""
    if isinstance(method, base.Frame):
        return method.index >> 16, method.index & 0xFFFF
    key = {
        fastpath.Publish: fastpath.BASIC_PUBLISH,
        fastpath.Ack: fastpath.BASIC_ACK,
        fastpath.Nack: fastpath.BASIC_NACK,
        fastpath.Reject: fastpath.BASIC_REJECT,
    }[type(method)]
    return key >> 16, key & 0xFFFF


def method_name(method: Any) -> str:
    """RabbitMQ's name for a method, e.g. 'basic.publish'."""
    if isinstance(method, base.Frame):
        return method.name.lower()
    return f"basic.{type(method).__name__.lower()}"


def encode_method(channel: int, method: base.Frame) -> bytes:
    return pamqp_frame.marshal(method, channel)


def build(method_class: type[base.Frame], **fields: Any) -> base.Frame:
    """A pamqp method that skips pamqp's client-side validation when marshalled.

    pamqp checks names against the spec's strict pattern, which RabbitMQ (and so Leveret) does not
    enforce: a queue may be named with any UTF-8 up to 255 bytes, and replies echo such names.
    """
    method = _unchecked(method_class)()
    for name, value in fields.items():
        setattr(method, name, value)
    return method


_UNCHECKED: dict[type[base.Frame], type[base.Frame]] = {}


def _unchecked(method_class: type[base.Frame]) -> type[base.Frame]:
    unchecked = _UNCHECKED.get(method_class)
    if unchecked is None:
        # No __slots__ here on purpose: pamqp marshals `self.__slots__`, which must stay the parent's.
        unchecked = type(method_class.__name__, (method_class,), {"validate": lambda self: None})
        _UNCHECKED[method_class] = unchecked
    return unchecked
