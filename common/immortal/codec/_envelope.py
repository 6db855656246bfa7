"""The sealed payload's bytes: marker, format, key id, then what the codec made.

``0xC1`` is a byte msgpack never uses, so a sealed payload cannot be mistaken for a plain
one (every plain payload is msgpack): ``C1 'I' 'E' <format> <len> <key id> <body>``.
"""

from __future__ import annotations

__all__ = ["MARKER", "Envelope", "is_sealed", "key_id_of", "parse", "wrap"]

MARKER = b"\xc1IE"


class Envelope:
    __slots__ = ("body", "fmt", "key_id")

    def __init__(self, fmt: int, key_id: str, body: bytes) -> None:
        self.fmt, self.key_id, self.body = fmt, key_id, body


def is_sealed(data: object) -> bool:
    return isinstance(data, bytes) and data.startswith(MARKER)


def wrap(fmt: int, key_id: str, body: bytes) -> bytes:
    kid = key_id.encode()
    return MARKER + bytes([fmt, len(kid)]) + kid + body


def parse(data: bytes) -> Envelope | None:
    """The envelope of ``data``; None if it is not sealed (or its header is cut short)."""
    if not data.startswith(MARKER) or len(data) < len(MARKER) + 2:
        return None
    fmt, size = data[3], data[4]
    kid = data[5 : 5 + size]
    if len(kid) != size:
        return None
    return Envelope(fmt, kid.decode(errors="replace"), data[5 + size :])


def key_id_of(data: bytes) -> str | None:
    env = parse(data)
    return None if env is None else env.key_id
