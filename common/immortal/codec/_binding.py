"""Where a payload belongs: what its ciphertext is bound to (AEAD associated data)."""

from __future__ import annotations

from dataclasses import dataclass

from immortal._codec import pack

__all__ = ["Binding"]


@dataclass(frozen=True)
class Binding:
    """A payload's place: tenant, workflow id, run id and field (``"input"``, ``"result"``,
    ``"signal:<name>"``, ``"activity:<seq>:input"``, ``"log"``, ...). A ciphertext opens
    only under the binding it was sealed with, so it cannot be moved to another run or
    field.

    >>> Binding("acme", "order-42", "9f0c...", "input").field
    'input'
    """

    tenant: str
    workflow_id: str
    run_id: str
    field: str

    def associated_data(self, version: bytes, key_id: str) -> bytes:
        # The header (format, key id) is authenticated with the place.
        return pack([version, key_id, self.tenant, self.workflow_id, self.run_id, self.field])

    def at(self, field: str) -> Binding:
        """The same run, another field."""
        return Binding(self.tenant, self.workflow_id, self.run_id, field)

    def __str__(self) -> str:
        return f"{self.field} of run {self.run_id} ({self.workflow_id!r}, tenant {self.tenant})"
