"""The payload codec: user values <-> msgpack bytes, decoded by type hints.

Arguments and results may be plain values or pydantic models (or anything pydantic can
validate). On the wire they are JSON-compatible values packed with msgpack; on the way
back in they are validated against the parameter or return annotation.
"""

from __future__ import annotations

import functools
from typing import Any

import msgpack
from pydantic import TypeAdapter, ValidationError
from pydantic_core import to_jsonable_python

from immortal._errors import PayloadError

__all__ = [
    "MAX_PAYLOAD_BYTES",
    "decode_args",
    "decode_value",
    "encode_args",
    "encode_value",
    "pack",
    "to_wire",
    "unpack",
]


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def unpack(data: bytes) -> Any:
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types
        raise PayloadError(f"payload is not valid msgpack: {exc}") from exc


def to_wire(value: Any) -> Any:
    """A msgpack-ready form of ``value`` (bytes stay bytes; models become dicts)."""
    if value is None or isinstance(value, (str, int, float, bool, bytes)):
        return value
    if isinstance(value, (list, tuple)):
        return [to_wire(v) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: to_wire(v) for k, v in value.items()}
    try:
        return to_jsonable_python(value)
    except Exception as exc:
        raise PayloadError(f"cannot encode value of type {type(value).__name__}: {exc}") from exc


# One user payload (a workflow's or activity's arguments, a result, a signal's payload).
# A history transition may carry a payload twice (an activity's input is in its event and in
# the run snapshot) beside other events, and must fit the server's max_payload (1 MiB by
# default), so one payload gets a quarter of it. Larger data belongs in an object store,
# passed by reference.
MAX_PAYLOAD_BYTES = 256 * 1024


def _bounded(data: bytes, what: str) -> bytes:
    if len(data) > MAX_PAYLOAD_BYTES:
        raise PayloadError(
            f"{what} of {len(data):,} bytes exceeds the payload limit of "
            f"{MAX_PAYLOAD_BYTES:,} bytes: pass large data by reference (e.g. an object store key)"
        )
    return data


def encode_value(value: Any) -> bytes:
    return _bounded(pack(to_wire(value)), "value")


def encode_args(args: tuple[Any, ...] | list[Any]) -> bytes:
    return _bounded(pack([to_wire(a) for a in args]), "arguments")


@functools.lru_cache(maxsize=1024)
def _adapter(hint: Any) -> TypeAdapter[Any]:
    return TypeAdapter(hint)


def _validate(obj: Any, hint: Any) -> Any:
    if hint is None or hint is Any:
        return obj
    try:
        return _adapter(hint).validate_python(obj)
    except ValidationError as exc:
        raise PayloadError(f"payload does not match {hint!r}: {exc}") from exc
    except TypeError:  # unhashable or odd hint: validate without the cache
        return TypeAdapter(hint).validate_python(obj)


def decode_value(data: bytes | None, hint: Any = None) -> Any:
    if data is None:
        return None
    return _validate(unpack(data), hint)


def decode_args(data: bytes, hints: tuple[Any, ...]) -> list[Any]:
    raw = unpack(data)
    if not isinstance(raw, list):
        raise PayloadError("arguments must be a msgpack array")
    if len(raw) > len(hints):
        raise PayloadError(f"got {len(raw)} arguments, the function takes {len(hints)}")
    return [_validate(v, h) for v, h in zip(raw, hints, strict=False)]
