"""The tenant's policy inside the hub: decided before anything is appended, every
decision logged (``docs/policy.md``, "In the hub").

- ``_watch``: each tenant's policy from ``imm-policy``, kept current by a watch.
- ``_gate``: the decisions on inputs (start, signal, cancel, terminate), on activity tasks
  before they are dispatched, and on the reads the relay forwards.
- ``_schedules``: the decisions on schedule changes and on each firing's start.
- ``_refused``: what a refused signal, cancel or terminate records in its run's history.
- ``_decision_log``: every decision to ``IMM_AUDIT``, allows in batches.
"""

from immortal_hub.policy._decision_log import DecisionLog
from immortal_hub.policy._gate import PolicyGate
from immortal_hub.policy._refused import RefusedInput, apply_refused
from immortal_hub.policy._schedules import firing_refused, schedule_author, schedule_refusal
from immortal_hub.policy._watch import PolicyWatch, TenantPolicy

__all__ = [
    "DecisionLog",
    "PolicyGate",
    "PolicyWatch",
    "RefusedInput",
    "TenantPolicy",
    "apply_refused",
    "firing_refused",
    "schedule_author",
    "schedule_refusal",
]
