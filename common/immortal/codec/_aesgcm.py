"""AES-256-GCM payload codec over a :class:`KeyRing`."""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Protocol, runtime_checkable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from immortal.codec._binding import Binding
from immortal.codec._envelope import parse, wrap
from immortal.codec._errors import CiphertextRefusedError, KeyNotInRingError
from immortal.codec._keys import KeyRing

__all__ = ["AesGcmCodec", "PayloadCodec"]

_AES_GCM_V1 = 1
_NONCE = 12


@runtime_checkable
class PayloadCodec(Protocol):
    """Seals user payloads on the client and worker, bound to where they belong."""

    def encode(self, data: bytes, binding: Binding) -> bytes:
        """``data`` sealed for ``binding`` (a sealed envelope, see ``is_sealed``)."""
        ...

    def decode(self, data: bytes, binding: Binding) -> bytes:
        """Open ``data``; raise :class:`KeyNotInRingError` or
        :class:`CiphertextRefusedError` naming the field and the key id."""
        ...

    def digest(self, data: bytes) -> str:
        """A keyed digest of ``data``: equal data, equal digest, without revealing it
        (the message ids that keep a log line stored once)."""
        ...


class AesGcmCodec:
    """AES-256-GCM, a random 96-bit nonce per payload, the binding as associated data.

    >>> codec = AesGcmCodec(KeyRing({"k1": bytes(32)}, current="k1"))
    >>> b = Binding("acme", "order-42", "r1", "input")
    >>> codec.decode(codec.encode(b"\\x91\\x01", b), b)
    b'\\x91\\x01'
    """

    def __init__(self, ring: KeyRing) -> None:
        self.ring = ring
        self._ciphers: dict[str, tuple[bytes, AESGCM]] = {}
        self._mac_keys: dict[bytes, bytes] = {}

    def encode(self, data: bytes, binding: Binding) -> bytes:
        key_id, key = self.ring.current()
        nonce = os.urandom(_NONCE)
        aad = binding.associated_data(b"\x01", key_id)
        body = self._cipher(key_id, key).encrypt(nonce, data, aad)
        return wrap(_AES_GCM_V1, key_id, nonce + body)

    def decode(self, data: bytes, binding: Binding) -> bytes:
        env = parse(data)
        if env is None or env.fmt != _AES_GCM_V1 or len(env.body) < _NONCE + 16:
            raise CiphertextRefusedError(
                f"{binding}: not an AES-GCM ciphertext of this codec", field=binding.field
            )
        key = self.ring.get(env.key_id)
        if key is None:
            raise KeyNotInRingError(
                f"{binding}: sealed with key {env.key_id!r}, which is not in the key ring "
                f"(it holds {', '.join(self.ring.ids)})",
                field=binding.field,
                key_id=env.key_id,
            )
        nonce, body = env.body[:_NONCE], env.body[_NONCE:]
        try:
            return self._cipher(env.key_id, key).decrypt(
                nonce, body, binding.associated_data(b"\x01", env.key_id)
            )
        except InvalidTag:
            raise CiphertextRefusedError(
                f"{binding}: the ciphertext (key {env.key_id!r}) does not open here: "
                "altered, or moved from another run or field",
                field=binding.field,
                key_id=env.key_id,
            ) from None

    def digest(self, data: bytes) -> str:
        key_id, key = self.ring.current()
        mac_key = self._mac_keys.get(key)
        if mac_key is None:  # never the encryption key itself
            hkdf = HKDF(hashes.SHA256(), 32, salt=None, info=b"immortal-codec digest")
            mac_key = self._mac_keys[key] = hkdf.derive(key)
        return key_id + ":" + hmac.new(mac_key, data, hashlib.sha256).hexdigest()[:16]

    def _cipher(self, key_id: str, key: bytes) -> AESGCM:
        cached = self._ciphers.get(key_id)
        if cached is None or cached[0] != key:
            cached = self._ciphers[key_id] = (key, AESGCM(key))
        return cached[1]
