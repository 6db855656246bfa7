"""What a client says at once, with a token, instead of waiting for the broker's refusal
(or for a timeout): a role that may not write, an operation the broker cannot scope to a
tenant, and whether a stream exists when stream info is not the tenant's to ask for."""

from __future__ import annotations

from typing import Any

from nats.errors import NoRespondersError

from immortal.security.connection import ConnectSecurity, relays_reads
from immortal.security.errors import PermissionDeniedError

__all__ = ["refuse_unscopable", "require_write", "stream_answers", "tenant_of"]


def tenant_of(security: ConnectSecurity | None, asked: str | None) -> str:
    """The tenant a client acts for: its token's (``asked`` may only repeat it), else
    ``asked`` or ``default``."""
    return security.tenant_for(asked) if security is not None else asked or "default"


def require_write(security: ConnectSecurity | None, what: str) -> None:
    """Raise if the token's role cannot ``what`` (start, signal, cancel, terminate)."""
    principal = security.principal() if security is not None else None
    if principal is not None and not principal.can_write:
        roles = ", ".join(sorted(principal.roles))
        raise PermissionDeniedError(
            f"not permitted: {principal.subject!r} (role {roles} of tenant "
            f"{principal.tenant!r}) may not {what}"
        )


def refuse_unscopable(nc: Any, what: str) -> None:
    """Raise for an operation the broker cannot scope to a tenant, on a token's connection."""
    if relays_reads(nc):
        raise PermissionDeniedError(
            f"{what}, which the broker cannot scope to a tenant: not available to a "
            "connection with a token yet"
        )


async def stream_answers(nc: Any, stream: str, subject: str) -> bool:
    """Whether ``stream`` exists, asked with a direct get of one of the tenant's subjects:
    a stream answers (found or not), a missing one has no responder."""
    from immortal._jetstream import last_message

    try:
        await last_message(nc, stream, subject, relay=False)
    except NoRespondersError:
        return False
    except PermissionDeniedError:
        # The broker keeps this principal's reads of the stream for the relay: its
        # tenant has a stored policy (``permissions.DECIDED_READS``), so a hub or the
        # auth service set the server up (both make every stream first). Asking the
        # relay would only log a refused read of a made-up run.
        pass
    return True
