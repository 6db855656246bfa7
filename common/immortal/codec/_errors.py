"""The codec's errors: each names the field and the key id it concerns."""

from __future__ import annotations

from immortal._errors import ImmortalError, PayloadError

__all__ = ["CiphertextRefusedError", "CodecError", "KeyNotInRingError", "KeyRingError"]


class CodecError(ImmortalError):
    """A payload could not be sealed or opened; ``field`` and ``key_id`` say which."""

    def __init__(self, message: str, *, field: str = "", key_id: str = "") -> None:
        super().__init__(message)
        self.field = field
        self.key_id = key_id


class KeyRingError(CodecError):
    """A key ring that cannot be loaded or used (a bad file, a key of the wrong size)."""


class KeyNotInRingError(CodecError):
    """The payload was sealed with a key this ring does not hold: add the key back to open
    it (nothing is lost meanwhile: a workflow task waits and is retried)."""


class CiphertextRefusedError(CodecError, PayloadError):
    """The ciphertext does not open with its key under this binding: it was altered, sealed
    with another key of the same id, or moved from another run or field. Never retried."""
