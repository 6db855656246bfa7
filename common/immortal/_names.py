"""Subjects, stream and bucket names, and the encoding of user-chosen tokens.

A NATS subject token may not hold ``.``, ``*``, ``>`` or whitespace, and KV keys and
consumer names are stricter still. Any string a user picks (a workflow id, a queue name)
is therefore encoded so that it is a valid, distinct token everywhere we use it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

__all__ = ["Names", "decode_token", "encode_token", "validate_tenant"]

_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_ESCAPE = "="
_ALL_SAFE = re.compile("[A-Za-z0-9_-]+").fullmatch  # one C call, not a generator per char
_TENANT = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")

InputKind = Literal[
    "start", "wft", "act", "started", "heartbeat", "signal", "cancel", "terminate", "child"
]
# The sender's principal id ends every input subject (``immortal.security``): the auth
# service lets a connection publish only under its own, so the broker says who sent what.
ANONYMOUS_SENDER = "anon"
TaskKind = Literal["wf", "act"]


def encode_token(value: str) -> str:
    """Encode ``value`` into ``[A-Za-z0-9_-=]+``, injectively.

    Safe characters pass unchanged; every other character becomes ``=XX`` per UTF-8 byte
    (``=`` itself included). The empty string becomes a lone ``=``, which no other
    encoding produces because an escape is always followed by two hex digits.
    """
    if not value:
        return _ESCAPE
    if _ALL_SAFE(value):
        return value
    out: list[str] = []
    for ch in value:
        if ch in _SAFE:
            out.append(ch)
        else:
            out.extend(f"{_ESCAPE}{b:02X}" for b in ch.encode())
    return "".join(out)


def decode_token(token: str) -> str:
    """Invert :func:`encode_token`."""
    if token == _ESCAPE:
        return ""
    if _ESCAPE not in token:
        return token
    raw = bytearray()
    i = 0
    while i < len(token):
        if token[i] == _ESCAPE:
            raw.append(int(token[i + 1 : i + 3], 16))
            i += 3
        else:
            raw.extend(token[i].encode())
            i += 1
    return raw.decode()


def validate_tenant(tenant: str) -> str:
    """Tenants are admin-chosen identifiers, like namespaces: lowercase, digits, dashes."""
    if not _TENANT.match(tenant):
        raise ValueError(
            f"invalid tenant {tenant!r}: use 1-63 lowercase letters, digits or dashes, "
            "starting with a letter or digit"
        )
    return tenant


@dataclass(frozen=True)
class Names:
    """Every JetStream name Immortal uses, under one configurable prefix."""

    prefix: str = "imm"

    def __post_init__(self) -> None:
        if not re.match(r"^[a-z][a-z0-9]{0,15}$", self.prefix):
            raise ValueError(f"invalid prefix {self.prefix!r}: lowercase letters and digits")

    # streams -------------------------------------------------------------------------
    @property
    def stream_in(self) -> str:
        return f"{self.prefix.upper()}_IN"

    @property
    def stream_history(self) -> str:
        return f"{self.prefix.upper()}_HISTORY"

    @property
    def stream_tasks(self) -> str:
        return f"{self.prefix.upper()}_TASKS"

    @property
    def stream_timers(self) -> str:
        return f"{self.prefix.upper()}_TIMERS"

    @property
    def stream_logs(self) -> str:
        return f"{self.prefix.upper()}_LOGS"

    @property
    def stream_audit(self) -> str:
        return f"{self.prefix.upper()}_AUDIT"

    @property
    def stream_dlq(self) -> str:
        return f"{self.prefix.upper()}_DLQ"

    @property
    def stream_runs(self) -> str:
        return f"{self.prefix.upper()}_RUNS"

    # buckets -------------------------------------------------------------------------
    @property
    def bucket_workers(self) -> str:
        return f"{self.prefix}-workers"

    @property
    def bucket_idem(self) -> str:
        return f"{self.prefix}-idem"

    @property
    def bucket_policy(self) -> str:
        return f"{self.prefix}-policy"

    @property
    def bucket_queues(self) -> str:
        return f"{self.prefix}-queues"

    @property
    def bucket_hubs(self) -> str:
        return f"{self.prefix}-hubs"

    @property
    def bucket_schedules(self) -> str:
        return f"{self.prefix}-schedules"

    @property
    def bucket_nonces(self) -> str:
        """The nonces of signed inputs, kept for as long as a signature can be valid, so
        a replay to any hub is refused (``immortal_hub``'s ``_signatures``)."""
        return f"{self.prefix}-nonces"

    @property
    def bucket_sessions(self) -> str:
        """Signing sessions' keys, for the hubs only (``immortal.security.sessions``)."""
        return f"{self.prefix}-sessions"

    @property
    def bucket_principals(self) -> str:
        """Principal id → who it is (subject, tenant, roles, token id), kept by the auth
        service for the hubs; never a token."""
        return f"{self.prefix}-principals"

    # subjects ------------------------------------------------------------------------
    def input_subject(
        self, tenant: str, queue: str, kind: InputKind, sender: str = ANONYMOUS_SENDER
    ) -> str:
        return f"{self.prefix}.in.{tenant}.{encode_token(queue)}.{kind}.{sender}"

    def rpc_subject(
        self, tenant: str, queue: str, kind: InputKind, sender: str = ANONYMOUS_SENDER
    ) -> str:
        """Core request-reply path to the hubs for the same inputs (see ``_inputs``)."""
        return f"{self.prefix}.rpc.{tenant}.{encode_token(queue)}.{kind}.{sender}"

    def read_subject(self, tenant: str, sender: str) -> str:
        """The hubs' read relay (``immortal_hub``'s ``_reads``): a batched direct get whose
        subject filter the hub checks is the tenant's own before forwarding it."""
        return f"{self.prefix}.read.{tenant}.{sender}"

    def schedule_change_subject(self, tenant: str, sender: str) -> str:
        """The hubs' schedule changes (``immortal_hub.schedules``): a create, pause, resume
        or delete, decided by the tenant's policy before the hub writes anything."""
        return f"{self.prefix}.schedules.{tenant}.{sender}"

    def input_filter(self, tenant: str, queue: str) -> str:
        return f"{self.prefix}.in.{tenant}.{encode_token(queue)}.>"

    def input_kind_filter(self, tenant: str, kind: InputKind) -> str:
        """One kind of the tenant's inputs queued in ``IMM_IN``, on every queue, from every
        sender."""
        return f"{self.prefix}.in.{tenant}.*.{kind}.*"

    def history_subject(self, tenant: str, workflow_id: str, run_id: str) -> str:
        return f"{self.prefix}.hist.{tenant}.{encode_token(workflow_id)}.{encode_token(run_id)}"

    def workflow_history_filter(self, tenant: str, workflow_id: str) -> str:
        """Every run's history subject of one workflow id."""
        return f"{self.prefix}.hist.{tenant}.{encode_token(workflow_id)}.*"

    def run_open_subject(
        self, tenant: str, queue: str, workflow_type: str, workflow_id: str, run_id: str
    ) -> str:
        """The runs index's record of one open run: its own subject, removed at the close."""
        tokens = (queue, workflow_type, workflow_id, run_id)
        return f"{self.prefix}.runs.{tenant}.open." + ".".join(map(encode_token, tokens))

    def run_closed_subject(self, tenant: str, status: str, queue: str, workflow_type: str) -> str:
        """Where the runs index keeps closed runs: one subject per status, queue and type,
        so that a filtered listing reads few subjects (see ``immortal.runs``)."""
        tokens = (status, queue, workflow_type)
        return f"{self.prefix}.runs.{tenant}.closed." + ".".join(map(encode_token, tokens))

    def runs_filter(
        self,
        tenant: str,
        phase: Literal["open", "closed"],
        *,
        status: str | None = None,
        queue: str | None = None,
        workflow_type: str | None = None,
    ) -> str:
        """The subject filter of one phase of the runs index, narrowed by what is given."""
        given = [status] if phase == "closed" else []
        given += [queue, workflow_type] + ([None, None] if phase == "open" else [])
        parts = ["*" if t is None else encode_token(t) for t in given]
        full = len(parts)
        while parts and parts[-1] == "*":
            parts.pop()
        if len(parts) < full:
            parts.append(">")  # the stripped tail: one token or more
        return f"{self.prefix}.runs.{tenant}.{phase}." + ".".join(parts)

    def task_subject(self, tenant: str, queue: str, kind: TaskKind) -> str:
        return f"{self.prefix}.task.{tenant}.{encode_token(queue)}.{kind}"

    def sticky_subject(self, tenant: str, queue: str, worker_id: str) -> str:
        """Workflow tasks for the one worker that has the run cached (see ``_sticky``)."""
        return f"{self.prefix}.task.{tenant}.{encode_token(queue)}.wf.{encode_token(worker_id)}"

    def push_subject(self, tenant: str, queue: str, worker_id: str | None = None) -> str:
        """Core subject of workflow tasks pushed to one worker, or to any worker of the queue
        (a queue group) when ``worker_id`` is None (see the hub's ``_push``)."""
        base = f"{self.prefix}.push.{tenant}.{encode_token(queue)}"
        return base if worker_id is None else f"{base}.{encode_token(worker_id)}"

    def sticky_consumer(self, tenant: str, queue: str, worker_id: str) -> str:
        return f"wfs_{tenant}_{encode_token(queue)}_{encode_token(worker_id)}"

    def dlq_subject(self, tenant: str, queue: str, kind: str) -> str:
        return f"{self.prefix}.dlq.{tenant}.{encode_token(queue)}.{encode_token(kind)}"

    def timer_subject(self, tenant: str, run_id: str, timer: str) -> str:
        return f"{self.prefix}.timer.{tenant}.{encode_token(run_id)}.{encode_token(timer)}"

    def schedule_subject(self, tenant: str, schedule_id: str) -> str:
        """Where a schedule's repeating ``Nats-Schedule`` message lives (one per subject)."""
        return f"{self.prefix}.sched.{tenant}.{encode_token(schedule_id)}"

    def schedule_key(self, tenant: str, schedule_id: str) -> str:
        return f"{tenant}.{encode_token(schedule_id)}"

    def fired_subject(self, tenant: str, queue: str) -> str:
        return f"{self.prefix}.fired.{tenant}.{encode_token(queue)}"

    def log_subject(self, tenant: str, workflow_id: str, run_id: str) -> str:
        return f"{self.prefix}.log.{tenant}.{encode_token(workflow_id)}.{encode_token(run_id)}"

    def audit_subject(self, tenant: str) -> str:
        return f"{self.prefix}.audit.{tenant}"

    def refusal_subject(self, tenant: str, sender: str, run_id: str = "*") -> str:
        """Where a hub tells the sender of a start it refused after the start waited in
        ``IMM_IN`` (``immortal._refusals``); in ``IMM_AUDIT``, beside the decision log."""
        run = run_id if run_id in ("*", ">") else encode_token(run_id)
        return f"{self.prefix}.audit.{tenant}.refused.{sender}.{run}"

    def parse_input_subject(self, subject: str) -> tuple[str, str, str]:
        """``imm.{in,rpc}.<tenant>.<queue>.<kind>.<sender>`` → (tenant, queue, kind).

        A fired timer, ``imm.fired.<tenant>.<queue>``, is an input of kind ``timer``.
        """
        tenant, queue, kind, _ = self.parse_input(subject)
        return tenant, queue, kind

    def parse_input(self, subject: str) -> tuple[str, str, str, str]:
        """(tenant, queue, kind, sender) of an input subject. A fired timer's sender is the
        server, and an input without a sender token (sent by an older version, or by a
        hub, the one role that may publish it when auth is on) has sender ``""``."""
        parts = subject.split(".")
        if len(parts) == 4 and parts[0] == self.prefix and parts[1] == "fired":
            return parts[2], decode_token(parts[3]), "timer", ""
        if len(parts) not in (5, 6) or parts[0] != self.prefix or parts[1] not in ("in", "rpc"):
            raise ValueError(f"not an input subject: {subject!r}")
        return parts[2], decode_token(parts[3]), parts[4], parts[5] if len(parts) == 6 else ""

    # keys and consumers ----------------------------------------------------------------
    def kv_subject(self, bucket: str, key: str) -> str:
        """The subject a put of ``key`` in ``bucket`` is published on (a put is a publish)."""
        return f"$KV.{bucket}.{key}"

    def worker_key(self, tenant: str, queue: str, worker_id: str) -> str:
        return f"{tenant}.{encode_token(queue)}.{encode_token(worker_id)}"

    def queue_key(self, tenant: str, queue: str) -> str:
        return f"{tenant}.{encode_token(queue)}"

    def parse_queue_key(self, key: str) -> tuple[str, str]:
        tenant, _, token = key.partition(".")
        return tenant, decode_token(token)

    def hub_consumer(self, tenant: str, queue: str) -> str:
        # Tenants hold no "_", so the first "_" after the kind separates them unambiguously.
        return f"hub_{tenant}_{encode_token(queue)}"

    def timer_consumer(self, tenant: str, queue: str) -> str:
        return f"timer_{tenant}_{encode_token(queue)}"

    def task_consumer(self, tenant: str, queue: str, kind: TaskKind) -> str:
        return f"{kind}_{tenant}_{encode_token(queue)}"
