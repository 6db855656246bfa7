"""Encrypted payloads: what clients and workers seal so that nobody reading the streams
(the hub included, which never needs plaintext) can read them without the key ring.

>>> ring = KeyRing.from_file("keys.json")     # or KeyRing.from_env(), KeyRing.from_callable
>>> client = Client(url, tenant="acme", codec=AesGcmCodec(ring))
>>> worker = Worker(url, tenant="acme", codec=AesGcmCodec(ring), workflows=[...])

Each ciphertext names its key id and is bound (AES-GCM associated data) to the tenant,
workflow id, run id and field it belongs to; see ``docs/security.md`` for what stays plain.
"""

from immortal.codec._aesgcm import AesGcmCodec, PayloadCodec
from immortal.codec._binding import Binding
from immortal.codec._envelope import is_sealed, key_id_of
from immortal.codec._errors import (
    CiphertextRefusedError,
    CodecError,
    KeyNotInRingError,
    KeyRingError,
)
from immortal.codec._keys import ENV_KEYS, ENV_KEYS_FILE, KeyRing, new_key
from immortal.codec._reveal import reveal_events, reveal_log, unreadable

__all__ = [
    "ENV_KEYS",
    "ENV_KEYS_FILE",
    "AesGcmCodec",
    "Binding",
    "CiphertextRefusedError",
    "CodecError",
    "KeyNotInRingError",
    "KeyRing",
    "KeyRingError",
    "PayloadCodec",
    "codec_from_env",
    "is_sealed",
    "key_id_of",
    "new_key",
    "reveal_events",
    "reveal_log",
    "unreadable",
]


def codec_from_env() -> AesGcmCodec | None:
    """An AES-GCM codec over the ring in the environment (``IMMORTAL_CODEC_KEYS`` or
    ``IMMORTAL_CODEC_KEYS_FILE``); None if neither is set."""
    ring = KeyRing.from_env()
    return None if ring is None else AesGcmCodec(ring)
