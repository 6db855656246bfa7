"""A signal, cancel or terminate the tenant's policy refused, as its run records it: one
event (``SignalRefused`` for a signal, ``PolicyDecision`` with ``allow: false`` for the
others) that changes nothing else: no workflow task, the run's code never sees it. The
input's id joins the run's applied ring, so a redelivery records it once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from immortal._wire import EventType, RunState, SignalWorkflow
from immortal.policy import Decision
from immortal_hub._transitions import Outcome, _Builder, _fork, input_id

__all__ = ["RefusedInput", "apply_refused"]

_ACTIONS = {
    "signal": "workflow.signal",
    "cancel": "workflow.cancel",
    "terminate": "workflow.terminate",
}


@dataclass(frozen=True)
class RefusedInput:
    """The input (``kind``, ``body``) and the decision that refused it."""

    kind: str
    body: Any
    decision: Decision

    @property
    def workflow_id(self) -> str:
        return str(self.body.workflow_id)

    @property
    def run_id(self) -> str:
        return str(self.body.run_id)

    @property
    def result_id(self) -> str:  # what ``input_id`` keys it by: the refused input's own id
        return refused_key(self.body)


def refused_key(body: Any) -> str:
    """The refused input's id in its run's applied ring (a signal's, a request's)."""
    if isinstance(body, SignalWorkflow):
        return input_id(body)
    return str(body.request_id)


def apply_refused(state: RunState | None, refused: RefusedInput, now: int) -> Outcome:
    if state is None or state.status.closed:
        what = "no run" if state is None else f"a {state.status} run"
        return Outcome(note=f"refused {refused.kind} for {what}: recorded in the audit only")
    key = refused_key(refused.body)
    if key in state.applied:
        return Outcome(duplicate=True)
    state = _fork(state)
    b = _Builder(state, now)
    d = refused.decision
    attrs: dict[str, Any] = {
        "action": _ACTIONS[refused.kind],
        "reason": d.reason,
        "rule_ids": list(d.rule_ids),
        "policy_version": d.policy_version,
    }
    if refused.body.by is not None:
        attrs["by"] = refused.body.by
    if refused.kind == "signal":
        body = refused.body
        b.add(EventType.SIGNAL_REFUSED, None, name=body.name, signal_id=body.signal_id, **attrs)
    else:
        b.add(EventType.POLICY_DECISION, None, allow=False, **attrs)
    return b.outcome(key)
