"""A tenant's policy where the hubs read it: key ``<tenant>.policy`` of the ``imm-policy``
bucket, as JSON. Versions only grow: a document is stored only if its ``version`` is
newer than the stored one's, by a compare-and-set on the key's revision, so two authors
applying at once cannot both win and no hub ever goes back to an older version.

The broker lets only a tenant's ``admin`` write the key (``$KV.imm-policy.<tenant>.>``);
any role of the tenant may read it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from immortal.policy._document import PolicyDocument
from immortal.policy._errors import PolicyError

if TYPE_CHECKING:
    from nats.js.kv import KeyValue

__all__ = [
    "POLICY_KEY",
    "StoredPolicy",
    "decode_stored",
    "policy_key",
    "read_policy",
    "write_policy",
]

POLICY_KEY = "policy"  # the key's last token: ``<tenant>.policy`` (``.retention`` is beside it)


@dataclass(frozen=True)
class StoredPolicy:
    """A stored document, the key's revision (a stream sequence) and when it was applied."""

    document: PolicyDocument
    revision: int
    applied_at: float


def policy_key(tenant: str) -> str:
    return f"{tenant}.{POLICY_KEY}"


def encode_stored(document: PolicyDocument) -> bytes:
    body = {"document": document.model_dump(mode="json"), "applied_at": time.time()}
    return json.dumps(body, separators=(",", ":")).encode()


def decode_stored(data: bytes, revision: int = 0) -> StoredPolicy:
    """The document a key holds; :class:`PolicyError` if it is not one (written by hand)."""
    try:
        body: Any = json.loads(data)
        document = PolicyDocument.model_validate(body["document"])
        applied_at = float(body.get("applied_at") or 0.0)
    except (ValueError, KeyError, TypeError) as exc:
        detail = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
        raise PolicyError(
            f"the stored policy (revision {revision}) is unreadable: {detail}"
        ) from None
    return StoredPolicy(document, revision, applied_at)


async def read_policy(kv: KeyValue, tenant: str) -> StoredPolicy | None:
    """The tenant's stored policy, or None if it has none."""
    from nats.js.errors import KeyNotFoundError
    from nats.js.errors import NotFoundError as JsNotFound

    from immortal._transient import retry_transient

    try:
        entry = await retry_transient(lambda: kv.get(policy_key(tenant)), what="policy")
    except (KeyNotFoundError, JsNotFound):
        return None
    if not entry.value:
        return None
    return decode_stored(entry.value, entry.revision or 0)


async def write_policy(kv: KeyValue, document: PolicyDocument) -> StoredPolicy:
    """Store ``document`` as its tenant's policy if its version is newer than the stored
    one; :class:`PolicyError` naming both versions otherwise."""
    from nats.errors import TimeoutError as NatsTimeout
    from nats.js.errors import KeyWrongLastSequenceError

    from immortal.security.violations import violation_for

    key = policy_key(document.tenant)
    current = await read_policy(kv, document.tenant)
    if current is not None and document.version <= current.document.version:
        raise PolicyError(
            f"version {document.version} is not newer than the stored policy's "
            f"(v{current.document.version}): raise it to {current.document.version + 1}"
        )
    value = encode_stored(document)
    try:
        if current is None:
            revision = await kv.create(key, value)
        else:
            revision = await kv.update(key, value, last=current.revision)
    except KeyWrongLastSequenceError:
        raise PolicyError(
            "the stored policy changed while this one was being applied: apply it again"
        ) from None
    except (NatsTimeout, TimeoutError):
        refused = violation_for(kv._js._nc, kv._pre + key)
        if refused is not None:
            raise refused from None
        raise
    return StoredPolicy(document, revision, time.time())
