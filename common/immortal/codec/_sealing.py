"""Sealing and opening payloads, failures and log lines: what clients and workers call.

With no codec configured a payload passes as it is; a sealed payload met without a codec
is a :class:`KeyNotInRingError` (the key is missing here). A plain payload opens under a
codec as it is: runs started before encryption was turned on, and what the hub itself
writes (its own failures: timeouts, cancellations), stay readable.
"""

from __future__ import annotations

from typing import Any

from immortal._codec import pack, unpack
from immortal._wire import Failure
from immortal.codec._aesgcm import PayloadCodec
from immortal.codec._binding import Binding
from immortal.codec._envelope import is_sealed, key_id_of
from immortal.codec._errors import KeyNotInRingError

__all__ = ["open_failure", "open_log", "open_payload", "placeholder", "seal", "seal_failure"]

# What a failure keeps in the clear: the hub decides retries by type and flag.
_FAILURE_SECRET = ("message", "details", "traceback", "cause")


def placeholder(data: bytes) -> str:
    """What stands in for a sealed value where its text would be."""
    return f"<encrypted (key {key_id_of(data) or '?'})>"


def seal(codec: PayloadCodec | None, binding: Binding, data: bytes) -> bytes:
    return data if codec is None else codec.encode(data, binding)


def open_payload(codec: PayloadCodec | None, binding: Binding, data: bytes | None) -> bytes | None:
    if data is None or not is_sealed(data):
        return data
    if codec is None:
        raise KeyNotInRingError(
            f"{binding}: sealed with key {key_id_of(data)!r}, and no key ring is configured",
            field=binding.field,
            key_id=key_id_of(data) or "",
        )
    return codec.decode(data, binding)


def seal_failure(codec: PayloadCodec | None, binding: Binding, failure: Failure) -> Failure:
    """``failure`` with its message, details, traceback and cause sealed; its type and
    non-retryable flag stay readable (the hub's retry decisions use them)."""
    if codec is None or failure.sealed is not None:
        return failure
    secret = failure.model_dump(include=set(_FAILURE_SECRET), exclude_none=True)
    sealed = codec.encode(pack(secret), binding)
    return Failure(
        type=failure.type,
        message=placeholder(sealed),
        non_retryable=failure.non_retryable,
        sealed=sealed,
    )


def open_failure(
    codec: PayloadCodec | None, binding: Binding, failure: dict[str, Any]
) -> dict[str, Any]:
    """The wire form of a failure with its sealed parts back in place."""
    sealed = failure.get("sealed")
    if not isinstance(sealed, bytes):
        return failure
    opened = open_payload(codec, binding, sealed)
    secret = unpack(opened or b"\x80")
    out = {k: v for k, v in failure.items() if k != "sealed"}
    out.update({k: v for k, v in secret.items() if k in _FAILURE_SECRET})
    return out


def open_log(codec: PayloadCodec | None, binding: Binding, sealed: bytes) -> tuple[str, Any]:
    """A log line's message and fields."""
    raw = unpack(open_payload(codec, binding, sealed) or b"\x80")
    return str(raw.get("message", "")), raw.get("fields") or {}
