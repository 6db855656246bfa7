"""Which of its queues a worker may serve (``worker.serve``), decided by the auth service
when the worker connects: a queue the tenant's policy refuses is left out of the
connection's grants, so the broker itself refuses the worker's pulls on it (and the
worker's registration names only the queues it got). Decided only when some rule names
``worker.serve`` (or ``worker.*``): a policy about starts does not, by its silence, take
every worker's queues away. Each decision goes to ``IMM_AUDIT``."""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

from immortal._names import Names
from immortal.policy import PolicyPrincipal, Resource
from immortal.security import Principal
from immortal.security.audit import AuditRecord, publish_audit
from immortal_hub.policy._watch import PolicyWatch, TenantPolicy

__all__ = ["served_queues"]

log = logging.getLogger(__name__)

_SERVE_ACTIONS = frozenset({"worker.serve", "worker.*"})


async def served_queues(
    watch: PolicyWatch, nc: Any, names: Names, principal: Principal, *, by: str
) -> Principal:
    """``principal`` with only the queues its tenant's policy lets it serve."""
    policy = watch.get(principal.tenant)
    if policy is None or not principal.queues or not _covers_serving(policy):
        return principal
    who = PolicyPrincipal(
        subject=principal.subject,
        tenant=principal.tenant,
        roles=tuple(principal.roles),
        groups=tuple(principal.groups),
        attributes=dict(principal.attributes),
    )
    kept = []
    for queue in principal.queues:
        resource = Resource(tenant=principal.tenant, queue=queue)
        decision = policy.engine.decide(who, "worker.serve", resource)
        if decision.allow:
            kept.append(queue)
        else:
            log.warning(
                "worker %s may not serve queue %s: %s", principal.subject, queue, decision.reason
            )
        record = AuditRecord(
            ts=time.time(),
            action="worker.serve",
            decision="allow" if decision.allow else "deny",
            reason="policy",
            message=decision.reason,
            principal=principal.record(),
            resource={"queue": queue},
            rule_ids=list(decision.rule_ids),
            policy_version=decision.policy_version,
            by=by,
        )
        await publish_audit(nc, names, principal.tenant, record)
    return dataclasses.replace(principal, queues=tuple(kept))


def _covers_serving(policy: TenantPolicy) -> bool:
    return any(_SERVE_ACTIONS & set(rule.actions) for rule in policy.document.rules)
