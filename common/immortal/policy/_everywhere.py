"""Whether a principal may do a read on every run of its tenant, whatever run it is: what
decides if a connection may follow the tenant's live notifications (``<p>.hist.<t>.>``,
``<p>.log.<t>.>``), whose subjects the broker cannot narrow to the runs a policy allows.

Sound, so cautious: yes only when an allow rule applies to the principal with nothing
about the run in it (no resource pattern, no relation, no condition on the resource, the
input or the time: a rule that allows only in office hours would still allow at night on
a connection made by day), and no deny rule names the principal at all (it might refuse
some run). A principal who may read only some runs reads them one at a time through the
hubs' read relay, where each run is decided.
"""

from __future__ import annotations

from immortal.policy._compile import CompiledPolicy
from immortal.policy._engine import APPLIES, NOT_WHO, candidates, outcome, refuse_other_tenant
from immortal.policy._model import PrincipalLike, Resource

__all__ = ["reads_every_run"]


def reads_every_run(policy: CompiledPolicy, principal: PrincipalLike, action: str) -> bool:
    """Whether ``policy`` lets ``principal`` do ``action`` on every run of its tenant."""
    anywhere = Resource(tenant=policy.tenant)
    if refuse_other_tenant(policy, principal, action, anywhere) is not None:
        return False
    req = policy.facts(principal, anywhere, None)
    rules = candidates(policy.by_action[action], req)
    if any(rule.deny and outcome(rule, req) != NOT_WHO for rule in rules):
        return False
    return any(
        not rule.deny
        and (rule.condition is None or not rule.condition.volatile)
        and outcome(rule, req) == APPLIES
        for rule in rules
    )
