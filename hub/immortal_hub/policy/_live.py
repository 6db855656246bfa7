"""Which of a tenant's live notifications a connection may follow, decided by the auth
service at connect: the history and log subjects (``<p>.hist.<t>.>``, ``<p>.log.<t>.>``)
carry every run of the tenant, so with a policy they go only to a principal the policy
lets read every run (``immortal.policy.reads_every_run``). Anyone else reads, and
follows, through the hubs' read relay, where each run is decided
(``immortal.security.permissions.DECIDED_READS``). Decided at connect, as ``worker.serve``
is: a policy change applies at the connection's next connect."""

from __future__ import annotations

import logging

from immortal.policy import PolicyPrincipal, reads_every_run
from immortal.security import Principal
from immortal.security.permissions import DECIDED_READS
from immortal_hub.policy._watch import PolicyWatch

__all__ = ["withheld_reads"]

log = logging.getLogger(__name__)

_UNDECIDED_ROLES = frozenset({"worker", "hub"})  # they read the runs of what they serve


def withheld_reads(watch: PolicyWatch, principal: Principal) -> frozenset[str]:
    """The reads of :data:`DECIDED_READS` that ``principal``'s connections get only
    through the relay: none without a policy."""
    policy = watch.get(principal.tenant)
    if policy is None or _UNDECIDED_ROLES & set(principal.roles):
        return frozenset()
    who = PolicyPrincipal(
        subject=principal.subject,
        tenant=principal.tenant,
        roles=tuple(principal.roles),
        groups=tuple(principal.groups),
        attributes=dict(principal.attributes),
    )
    compiled = policy.compiled
    withheld = frozenset(a for a in DECIDED_READS if not reads_every_run(compiled, who, a))
    if withheld:
        log.info(
            "%s of tenant %s reads %s through the relay (policy v%d: not every run)",
            principal.subject, principal.tenant, ", ".join(sorted(withheld)), policy.version,
        )  # fmt: skip
    return withheld
