"""Fields of a sealed start's input revealed to the tenant's policy.

With encrypted payloads the hub holds no key, so a rule on ``input.amount`` cannot read
the amount, and refuses (docs/policy.md, "Conditions"). A client may reveal chosen fields
in plaintext beside the sealed input (``client.start(..., policy_input={"amount":
12_000})``): the hub's policy reads them (the other fields stay unreadable), they are
recorded in plaintext in the run's ``WorkflowStarted`` event, and they travel in the
start's body, so an input signature covers them. The worker, which opens the input, fails
the run before any workflow code runs if a revealed field differs from the opened one
(non-retryable ``PolicyInputMismatch``): revealing a small amount for a large one gains
nothing but a failed run.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from immortal._codec import to_wire, unpack
from immortal._errors import ApplicationError, PayloadError

__all__ = ["MISMATCH", "mismatch", "mismatch_error", "revealed_fields"]

MISMATCH = "PolicyInputMismatch"


def revealed_fields(policy_input: Mapping[str, Any], encoded_args: bytes) -> dict[str, Any]:
    """``policy_input`` as it travels, checked against the arguments before anything is
    sent: :class:`PayloadError` naming the field when one differs from the input's."""
    if not isinstance(policy_input, Mapping) or not policy_input:
        raise PayloadError("policy_input must be a mapping of the input's fields")
    revealed = {str(k): to_wire(v) for k, v in policy_input.items()}
    why = mismatch(revealed, encoded_args)
    if why is not None:
        raise PayloadError(why)
    return revealed


def mismatch(revealed: Mapping[str, Any], encoded_args: bytes) -> str | None:
    """Why the opened arguments do not bear out the revealed fields (None: they do)."""
    try:
        args = unpack(encoded_args)
    except PayloadError as exc:
        return f"policy_input cannot be checked: {exc}"
    first = args[0] if isinstance(args, list) and len(args) == 1 else None
    if not isinstance(first, dict):
        return "policy_input reveals fields, but the input is not one mapping"
    for name, value in revealed.items():
        if name not in first:
            return f"policy_input reveals {name}, which the input does not have"
        if first[name] != value or type(first[name]) is not type(value):
            return f"policy_input reveals {name} as {value!r}, but the input has {first[name]!r}"
    return None


def mismatch_error(message: str) -> ApplicationError:
    """The failure of a run whose input does not bear out what its start revealed."""
    return ApplicationError(message, type=MISMATCH, non_retryable=True)
