"""The decisions the hub takes for a tenant that has a policy, before anything happens.

- **Inputs** (``refuses``): a start, signal, cancel or terminate of a verified principal
  is decided before it is applied. A refused start creates no run; a refused signal,
  cancel or terminate of a running run is recorded in its history (``_refused``) and
  changes nothing else; either way the sender is answered ``denied:`` with the reason
  (``PolicyDeniedError``). An allowed start records its ``PolicyDecision`` event and the
  principal the run acts for (``RunState.principal``).
- **Activity tasks** (``screen``): a task whose activity type some rule covers is decided
  for the run's principal before it is dispatched; a refused one is not dispatched, its
  attempt fails with the non-retryable ``PolicyDenied`` and the reason.
- **Reads** (``read_refusal``): the read relay asks before forwarding a batched read of
  history (``workflow.read``), logs (``logs.read``), the runs index (``workflow.read``),
  the audit (``admin.audit``), dead letters (``admin.dlq``) or schedules
  (``schedule.read``; ``_schedules`` decides their changes and firings). A worker's
  reads are not decided there: it reads the runs of the queues it serves. An allowed
  read is logged once a minute per reader and run (a follower reads every second).

Inputs a hub sent (a child's start, a continuation) are not decided again: they carry
the principal of the run they come from. With auth off there is no verified principal,
and nothing is decided (the hub says so once per tenant). Every decision goes to the
decision log.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from immortal._codec import unpack
from immortal._errors import PayloadError
from immortal._inputs import denied_reply
from immortal._names import Names, decode_token
from immortal._refusals import store_refusal
from immortal._wire import ActivityResult, ActivityTask, Failure, RunState, StartWorkflow
from immortal.codec import is_sealed
from immortal.policy import Decision, PolicyPrincipal, Resource, reads_every_run
from immortal.security import HUB_PID
from immortal.security.permissions import DECIDED_READS
from immortal_hub._emissions import Emission
from immortal_hub.policy._decision_log import DecisionLog
from immortal_hub.policy._refused import RefusedInput
from immortal_hub.policy._watch import PolicyWatch, TenantPolicy

__all__ = ["INPUT_ACTIONS", "PolicyGate"]

log = logging.getLogger(__name__)

INPUT_ACTIONS = {
    "start": "workflow.start",
    "signal": "workflow.signal",
    "cancel": "workflow.cancel",
    "terminate": "workflow.terminate",
}

_READ_LOG_S = 60.0  # an allowed read is logged once a minute per reader, action, run

LoadState = Callable[[str, str, str], Awaitable[RunState | None]]  # tenant, workflow, run
ApplyRefused = Callable[[str, str, str, RefusedInput], Awaitable[Any]]
Claims = Callable[[str], Awaitable[Mapping[str, Any]]]  # sender pid -> its full record


class PolicyGate:
    def __init__(
        self,
        watch: PolicyWatch,
        log_: DecisionLog,
        names: Names,
        hub_id: str,
        *,
        secure: bool,
        claims: Claims,
        load_state: LoadState,
        apply_refused: ApplyRefused,
    ) -> None:
        self.watch = watch
        self.log = log_
        self.names = names
        self.hub_id = hub_id
        self.secure = secure
        self._claims = claims
        self._load_state = load_state
        self._apply_refused = apply_refused
        self._warned: set[str] = set()
        self._reads_logged: dict[tuple[str, str, str | None, int], float] = {}
        self.decisions = 0  # for tests and the bench

    @classmethod
    async def open(
        cls,
        nc: Any,
        names: Names,
        hub_id: str,
        *,
        engine: str,
        secure: bool,
        claims: Claims,
        load_state: LoadState,
        apply_refused: ApplyRefused,
        spawn: Callable[[Any], None],
    ) -> PolicyGate:
        """A hub's gate: every stored policy read, the watch and the decision log running."""
        watch = PolicyWatch(nc.jetstream(), names, engine=engine)
        await watch.start()
        spawn(watch.watch())
        decision_log = DecisionLog(nc, names)
        decision_log.start()
        return cls(
            watch,
            decision_log,
            names,
            hub_id,
            secure=secure,
            claims=claims,
            load_state=load_state,
            apply_refused=apply_refused,
        )

    async def stop(self) -> None:
        await self.log.stop()

    # -- inputs -------------------------------------------------------------------------

    async def refuses(self, tenant: str, queue: str, kind: str, body: Any) -> bytes | None:
        """The ``denied:`` reply if the tenant's policy refuses this input (recorded as
        described above), else None; an allowed start is marked for its history."""
        action = INPUT_ACTIONS.get(kind)
        if action is None:
            return None
        by = body.by
        from_hub = by is not None and by.get("pid") == HUB_PID
        if from_hub:
            return None  # a child's start, a continuation: it acts for its parent's principal
        verified = self.secure and by is not None
        principal_record: dict[str, Any] = {}
        if verified:
            principal_record = {**(await self._claims(str(by.get("pid", "")))), **by}
        if isinstance(body, StartWorkflow):
            # Never the sender's word. The run acts for its verified starter, policy or
            # not, so a policy applied later decides its activities for the right one.
            body.decision = None
            body.acting_for = _acting_for(principal_record) if verified else None
        policy = self.watch.get(tenant)
        if policy is None:
            return None
        if not verified:
            self._warn_unverified(tenant)
            return None
        resource = await self._resource_of(tenant, queue, body)
        if resource is None:
            return None  # a run whose start is queued: decided once it is applied
        principal = _principal(principal_record, tenant)
        decision = policy.engine.decide(principal, action, resource)
        self._log(tenant, principal_record, action, resource, decision, _digest(body))
        if decision.allow:
            if isinstance(body, StartWorkflow):
                body.decision = _event_attrs(decision)
            return None
        if kind != "start":
            await self._apply_refused(tenant, queue, kind, RefusedInput(kind, body, decision))
        return denied_reply(decision.reason, decision.rule_ids, decision.policy_version)

    async def tell_sender(self, tenant: str, kind: str, body: Any, denied: bytes) -> None:
        """A start refused after it waited in ``IMM_IN`` has no request to answer: its
        refusal is stored where its sender's ``result()`` looks (``immortal._refusals``)."""
        sender = str((body.by or {}).get("pid") or "")
        if kind != "start" or not sender:
            return  # a refused signal or cancel is in its run's history
        await store_refusal(self.log.nc, self.names, tenant, sender, body.run_id, denied)

    async def _resource_of(self, tenant: str, queue: str, body: Any) -> Resource | None:
        if isinstance(body, StartWorkflow):
            fields, unreadable = input_fields(body.input, body.policy_input)
            return Resource(
                tenant=tenant,
                queue=queue,
                workflow_type=body.workflow_type,
                workflow_id=body.workflow_id,
                input=fields,
                input_unreadable=unreadable,
            )
        state = await self._load_state(tenant, body.workflow_id, body.run_id)
        if state is None and getattr(body, "pending_start", False):
            return None
        return Resource(
            tenant=tenant,
            queue=queue,
            workflow_id=body.workflow_id,
            workflow_type=state.workflow_type if state is not None else None,
            status=str(state.status) if state is not None else None,
        )

    # -- activity tasks -----------------------------------------------------------------

    def screen(self, tenant: str, state: RunState, emissions: list[Emission]) -> list[Emission]:
        """``emissions`` with every activity task the policy refuses replaced by the
        failure of its attempt (an input to the run itself, deduped like the task)."""
        policy = self.watch.get(tenant)
        if policy is None or not any(e.kind == "act" for e in emissions):
            return emissions
        out = []
        for e in emissions:
            body = e.body
            if e.kind == "act" and isinstance(body, ActivityTask):
                if policy.covers_activity(body.name):
                    refused = self._decide_activity(tenant, state, e.queue, body, policy)
                    if refused is not None:
                        out.append(_failed_attempt(state, e, body, refused, self.hub_id))
                        continue
            out.append(e)
        return out

    def _decide_activity(
        self, tenant: str, state: RunState, queue: str, task: ActivityTask, policy: TenantPolicy
    ) -> Decision | None:
        record = state.principal or {"subject": "unknown", "tenant": tenant}
        # The run's id only if some rule could read it: otherwise every run's first
        # activity of a type would be a new request and the engine's cache of no use.
        by_id = policy.reads_workflow_id("activity.run")
        resource = Resource(
            tenant=tenant,
            queue=queue,
            workflow_type=state.workflow_type,
            workflow_id=state.workflow_id if by_id else None,
            activity_type=task.name,
        )
        decision = policy.engine.decide(_principal(record, tenant), "activity.run", resource)
        digest = hashlib.sha256(task.input).hexdigest()
        run = {"workflow_id": state.workflow_id}
        self._log(tenant, record, "activity.run", resource, decision, digest, run)
        return None if decision.allow else decision

    # -- reads --------------------------------------------------------------------------

    async def read_refusal(
        self, tenant: str, sender: str, stream: str, filters: list[str]
    ) -> str | None:
        """Why the tenant's policy refuses this read by ``sender`` (None: it may)."""
        policy = self.watch.get(tenant)
        if policy is None or not self.secure:
            return None
        action, id_token = self._read_action(stream)
        if action is None:
            return None
        record = dict(await self._claims(sender)) or {"pid": sender}
        if {"worker", "hub"} & set(record.get("roles") or ()):
            return None  # a worker reads the runs of the queues it serves (worker.serve)
        principal = _principal(record, tenant)
        for subject in filters:
            parts = subject.split(".")
            workflow_id = None
            if id_token is not None and len(parts) > id_token and parts[id_token] not in "*>":
                workflow_id = decode_token(parts[id_token])
            resource = (
                Resource(tenant=tenant, schedule_id=workflow_id)  # a schedule's key
                if action == "schedule.read"
                else Resource(tenant=tenant, workflow_id=workflow_id)
            )
            decision = policy.engine.decide(principal, action, resource)
            if decision.allow and workflow_id is None and action in DECIDED_READS:
                decision = _across_runs(decision, policy, principal, action)
            if not decision.allow or self._first_read(sender, action, workflow_id, decision):
                self._log(tenant, record, action, resource, decision, None)
            if not decision.allow:
                return decision.reason
        return None

    def _first_read(self, sender: str, action: str, wid: str | None, d: Decision) -> bool:
        """Whether this allowed read is the first of its kind in a while: a follower (logs,
        events, the audit itself) reads every second, and logging each of its reads would
        fill the log with the same allow (and the audit's followers with their own)."""
        now = time.monotonic()
        key = (sender, action, wid, d.policy_version)
        if now - self._reads_logged.get(key, -_READ_LOG_S) < _READ_LOG_S:
            return False
        if len(self._reads_logged) > 10_000:
            self._reads_logged.clear()
        self._reads_logged[key] = now
        return True

    def _read_action(self, stream: str) -> tuple[str | None, int | None]:
        n = self.names
        return {
            n.stream_history: ("workflow.read", 3),
            n.stream_logs: ("logs.read", 3),
            n.stream_runs: ("workflow.read", None),
            n.stream_audit: ("admin.audit", None),
            n.stream_dlq: ("admin.dlq", None),
            f"KV_{n.bucket_schedules}": ("schedule.read", 3),  # $KV.<bucket>.<t>.<id>
        }.get(stream, (None, None))

    # -- the log ------------------------------------------------------------------------

    def _log(
        self,
        tenant: str,
        principal: Mapping[str, Any],
        action: str,
        resource: Resource,
        decision: Decision,
        digest: str | None,
        run: dict[str, Any] | None = None,
    ) -> None:
        self.decisions += 1
        # A plain mapping (an AuditRecord's fields): allows are the bulk, and building
        # and dumping a model for each was most of a decision's cost.
        record: dict[str, Any] = {
            "ts": time.time(),
            "action": action,
            "decision": "allow" if decision.allow else "deny",
            "reason": "policy",
            "message": decision.reason,
            "principal": _acting_for(principal),
            "resource": {**_facets(resource), **(run or {})},
            "rule_ids": list(decision.rule_ids),
            "policy_version": decision.policy_version,
            "by": self.hub_id,
        }
        if digest is not None:
            record["input_digest"] = digest
        self.log.record(tenant, record)

    def _warn_unverified(self, tenant: str) -> None:
        if tenant not in self._warned:
            self._warned.add(tenant)
            log.warning(
                "tenant %s has a policy, but auth is off: no principal is verified, so the "
                "policy decides nothing (run the hub with a token to turn it on)",
                tenant,
            )


SEALED_INPUT = "the input is encrypted and the hub holds no key"


def input_fields(
    data: bytes, revealed: Mapping[str, Any] | None = None
) -> tuple[dict[str, Any], str | None]:
    """What ``input.<name>`` reads, and why other fields cannot be read: the workflow's
    first argument when it is a mapping (a dataclass or model arrives as its fields), else
    ``{"args": [...]}``; an input the hub cannot read (encrypted) offers nothing. A rule
    that reads a field not offered then refuses (``Resource.input_unreadable``): for an
    encrypted input, and for arguments of which some are mappings (the field may be in
    one of them); arguments with no mapping among them have no fields to miss. Of a
    sealed input, the fields its start reveals (``immortal._revealed``) are read."""
    if is_sealed(data):
        if revealed:
            shown = ", ".join(f"input.{k}" for k in sorted(revealed))
            return dict(revealed), f"{SEALED_INPUT} (the start reveals only {shown})"
        return {}, SEALED_INPUT
    try:
        raw = unpack(data)
    except PayloadError:
        return {}, "the input cannot be read (it is not msgpack)"
    if isinstance(raw, list) and len(raw) == 1 and isinstance(raw[0], dict):
        return {str(k): v for k, v in raw[0].items()}, None
    if isinstance(raw, list):
        if any(isinstance(arg, dict) for arg in raw):
            why = f"the input is {len(raw)} arguments, not one mapping (rules read input.args)"
            return {"args": raw}, why
        return {"args": raw}, None
    return {}, "the input cannot be read (it is not a list of arguments)"


_FACETS = ("queue", "workflow_type", "workflow_id", "activity_type", "schedule_id", "status")


def _facets(resource: Resource) -> dict[str, Any]:
    """What an audit record says the decision was about (never the input)."""
    return {k: v for k in _FACETS if (v := getattr(resource, k)) is not None}


def _across_runs(
    decision: Decision, policy: TenantPolicy, principal: PolicyPrincipal, action: str
) -> Decision:
    """A read of every run (a wildcard filter: ``events()``, the runs index) is allowed
    only to a principal the policy lets read every run: a rule that allows "a run" with
    a deny rule on ``secret-*`` beside it must not read the secret runs in bulk."""
    if reads_every_run(policy.compiled, principal, action):
        return decision
    return Decision(
        allow=False,
        reason=(
            f"denied: {action} of every run of tenant {principal.tenant} needs a rule "
            f"allowing it on all of them and no deny rule naming {principal.subject}; "
            f"read the runs one by one (policy v{policy.version})"
        ),
        policy_version=policy.version,
    )


def _principal(record: Mapping[str, Any], tenant: str) -> PolicyPrincipal:
    return PolicyPrincipal(
        subject=str(record.get("subject") or record.get("pid") or "unknown"),
        tenant=str(record.get("tenant") or tenant),
        roles=tuple(record.get("roles") or ()),
        groups=tuple(record.get("groups") or ()),
        attributes=dict(record.get("attributes") or {}),
    )


def _acting_for(record: Mapping[str, Any]) -> dict[str, Any]:
    """The principal as runs and audit records keep it: claims, never a token."""
    keep = ("subject", "tenant", "roles", "groups", "attributes", "kind", "pid")
    return {k: record[k] for k in keep if record.get(k) not in (None, "", [], {})}


def _event_attrs(decision: Decision) -> dict[str, Any]:
    return {
        "allow": decision.allow,
        "reason": decision.reason,
        "rule_ids": list(decision.rule_ids),
        "policy_version": decision.policy_version,
    }


def _digest(body: Any) -> str | None:
    data = getattr(body, "input", None)
    return hashlib.sha256(data).hexdigest() if isinstance(data, bytes) else None


def _failed_attempt(
    state: RunState, e: Emission, task: ActivityTask, decision: Decision, hub_id: str
) -> Emission:
    now = int(time.time() * 1000)
    result = ActivityResult(
        workflow_id=task.workflow_id,
        run_id=task.run_id,
        scheduled_id=task.scheduled_id,
        attempt=task.attempt,
        delivery=0,
        result_id=f"policy:{e.msg_id}",
        worker=hub_id,
        started_ts=now,
        ended_ts=now,
        failure=Failure(
            type="PolicyDenied",
            message=decision.reason,
            non_retryable=True,
            details={
                "rule_ids": list(decision.rule_ids),
                "policy_version": decision.policy_version,
            },
        ),
    )
    return Emission("input", state.queue, f"policy:{e.msg_id}", result, input_kind="act")
