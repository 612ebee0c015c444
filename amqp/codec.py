"""Method frames: the hot ones through the struct fast path, all others through pamqp."""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from pamqp import base, commands
from pamqp import frame as pamqp_frame

from . import fastpath
from .constants import FRAME_ERROR, NOT_IMPLEMENTED
from .errors import ConnectionLevelError

_FAST_DECODERS: dict[int, Callable[[bytes], Any]] = {
    fastpath.BASIC_PUBLISH: fastpath.decode_publish,
    fastpath.BASIC_ACK: fastpath.decode_ack,
    fastpath.BASIC_NACK: fastpath.decode_nack,
    fastpath.BASIC_REJECT: fastpath.decode_reject,
}


def decode_method(payload: bytes) -> Any:
    """A method object: a fastpath tuple for the hot methods, a pamqp command for the rest.

    Arguments that do not fill the payload exactly (cut short, or with bytes left over) are a 501
    FRAME_ERROR naming the method, as RabbitMQ's "cannot decode"; an unknown class or method is 540.
    """
    if len(payload) < 4:
        raise ConnectionLevelError(FRAME_ERROR, "method frame too short")
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
        if _arguments_end(_layout(factory), payload) != len(payload):
            raise ValueError("bytes left after the last argument")
        method = factory()
        method.unmarshal(payload[4:])
        return method
    except ConnectionLevelError:
        raise
    except UnicodeDecodeError as exc:
        raise ConnectionLevelError(FRAME_ERROR, "Malformed UTF-8 in shortstr") from exc
    except (struct.error, ValueError, IndexError, TypeError) as exc:
        raise ConnectionLevelError(
            FRAME_ERROR, f"cannot decode {method_name_of(key)} arguments: {exc}", key >> 16, key & 0xFFFF
        ) from exc


# Bytes taken by each fixed-size argument type (bits are packed eight to an octet).
_FIXED_SIZES = {"octet": 1, "short": 2, "long": 4, "longlong": 8, "timestamp": 8}
_LENGTH_PREFIXES = {"shortstr": (">B", 1), "longstr": (">I", 4), "table": (">I", 4)}


_LAYOUTS: dict[type[base.Frame], tuple[str, ...]] = {}


def _layout(factory: type[base.Frame]) -> tuple[str, ...]:
    """The argument types of a method class, in wire order."""
    layout = _LAYOUTS.get(factory)
    if layout is None:
        layout = _LAYOUTS[factory] = tuple(factory.amqp_type(name) for name in factory.__slots__)
    return layout


def _arguments_end(layout: tuple[str, ...], payload: bytes) -> int:
    """Where the arguments of `layout`, read from offset 4 of `payload`, end; ValueError when they run
    past the end of the payload. pamqp reads whatever it is given, so the bounds are checked here."""
    pos, bits = 4, 0
    for kind in layout:
        if kind == "bit":
            if bits % 8 == 0:
                pos += 1
            bits += 1
            continue
        bits = 0
        prefix = _LENGTH_PREFIXES.get(kind)
        if prefix is None:
            pos += _FIXED_SIZES[kind]
        else:
            pos += prefix[1] + struct.unpack_from(prefix[0], payload, pos)[0]
        if pos > len(payload):
            raise ValueError(f"{kind} runs past the end of the frame")
    if pos > len(payload):
        raise ValueError("bit field runs past the end of the frame")
    return pos


def method_name_of(key: int) -> str:
    factory: Any = commands.INDEX_MAPPING.get(key)
    return factory.name.lower() if factory is not None else f"method {key >> 16}.{key & 0xFFFF}"


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
