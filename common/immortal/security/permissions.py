"""What each role may publish and subscribe to, as data: the auth service turns this
into a NATS user's permissions, and ``docs/security.md`` renders the same table.

Everything is scoped to one tenant (the subject token after the kind), and input
subjects end in the connection's own principal id, so the broker both isolates tenants
and stamps who sent each input. Reads that the JetStream API cannot scope by subject (the
batched direct get takes its subject filter in the body) go through the hubs' read relay
(``<p>.read.<tenant>.<pid>``), which checks the filter and forwards the request.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

from immortal._names import Names, encode_token
from immortal.security.identity import Principal, Role

__all__ = ["DECIDED_READS", "Grants", "grants_for", "permission_table"]

# Input kinds a role may send, by the queue they go to.
WRITER_INPUTS = ("start", "signal", "cancel", "terminate")
WORKER_OWN_QUEUE_INPUTS = ("wft",)  # results of workflow tasks of a queue it serves
# An activity's result goes to its workflow's queue, which may be one the worker does not
# serve; the hub checks the attempt, and issue 17's signatures add per-message proof.
WORKER_ANY_QUEUE_INPUTS = ("act", "started", "heartbeat")


@dataclass
class Grants:
    """A NATS user's permissions: allowed publish and subscribe subjects, and whether it
    may answer requests it received (a worker answers pushed tasks)."""

    pub: list[str] = field(default_factory=list)
    sub: list[str] = field(default_factory=list)
    pub_deny: list[str] = field(default_factory=list)
    sub_deny: list[str] = field(default_factory=list)
    responses: bool = False

    def add(self, other: Grants) -> None:
        self.pub += [s for s in other.pub if s not in self.pub]
        self.sub += [s for s in other.sub if s not in self.sub]
        self.responses = self.responses or other.responses


def inbox_prefix(pid: str) -> str:
    """The connection's own inbox prefix: replies to it reach no one else."""
    return f"_INBOX_{pid}"


#: Reads a tenant's policy may decide per run. A principal it does not let read every run
#: (``withheld``) gets neither the live notifications of that kind nor the direct gets
#: (their subjects cannot be narrowed to runs): it reads through the hubs' read relay.
DECIDED_READS = ("workflow.read", "logs.read")


def grants_for(principal: Principal, names: Names, *, withheld: Collection[str] = ()) -> Grants:
    """The permissions of ``principal``'s connections; ``withheld``: actions of
    :data:`DECIDED_READS` its tenant's policy does not allow on every run."""
    roles = {Role.parse(r) for r in principal.roles} - {None}
    if Role.HUB in roles:
        # The whole application account, but never the auth requests (they carry tokens).
        return Grants(
            pub=[">"], sub=[">"], pub_deny=["$SYS.>"], sub_deny=["$SYS.>"], responses=True
        )
    grants = Grants()
    if roles:
        reader = _reader(names, principal.tenant, principal.pid)
        if withheld and Role.WORKER not in roles:  # a worker reads the runs it serves
            reader = _without(reader, names, principal.tenant, withheld)
        grants.add(reader)
    if roles & {Role.WRITER, Role.ADMIN}:
        grants.add(_writer(names, principal.tenant, principal.pid))
    if Role.ADMIN in roles:
        grants.add(_admin(names, principal.tenant))
    if Role.WORKER in roles:
        for queue in principal.queues:
            grants.add(_worker(names, principal.tenant, queue, principal.pid))
    return grants


def _direct(stream: str, subject: str) -> str:
    return f"$JS.API.DIRECT.GET.{stream}.{subject}"


def _kv(names: Names, bucket: str, tenant: str) -> tuple[str, str]:
    """(the direct get of a tenant's keys, the put/delete of them)."""
    return _direct(f"KV_{bucket}", f"$KV.{bucket}.{tenant}.>"), f"$KV.{bucket}.{tenant}.>"


def _reader(names: Names, t: str, pid: str) -> Grants:
    p = names.prefix
    reads = [
        _direct(names.stream_history, f"{p}.hist.{t}.>"),
        _direct(names.stream_logs, f"{p}.log.{t}.>"),
        _direct(names.stream_runs, f"{p}.runs.{t}.>"),  # the runs index
        _direct(names.stream_in, f"{p}.in.{t}.>"),  # a start queued, not applied yet
        *(
            _kv(names, bucket, t)[0]
            # Schedules are read through the relay, where the tenant's policy decides.
            for bucket in (
                names.bucket_workers,
                names.bucket_queues,
                names.bucket_policy,
                names.bucket_idem,
            )
        ),
        names.read_subject(t, pid),
        # Its own starts refused after they waited in IMM_IN (immortal._refusals).
        _direct(names.stream_audit, names.refusal_subject(t, pid, ">")),
    ]
    return Grants(
        pub=reads,
        # Its inbox; live history (result(), follow) and log lines, as notifications.
        sub=[
            f"{inbox_prefix(pid)}.>",
            f"{p}.hist.{t}.>",
            f"{p}.log.{t}.>",
            names.refusal_subject(t, pid, ">"),
        ],
    )


def _without(grants: Grants, names: Names, t: str, withheld: Collection[str]) -> Grants:
    p, gone = names.prefix, set()
    if "workflow.read" in withheld:
        gone |= {f"{p}.hist.{t}.>", _direct(names.stream_history, f"{p}.hist.{t}.>")}
        gone.add(_direct(names.stream_runs, f"{p}.runs.{t}.>"))
    if "logs.read" in withheld:
        gone |= {f"{p}.log.{t}.>", _direct(names.stream_logs, f"{p}.log.{t}.>")}
    return Grants(
        pub=[s for s in grants.pub if s not in gone],
        sub=[s for s in grants.sub if s not in gone],
        responses=grants.responses,
    )


def _writer(names: Names, t: str, pid: str) -> Grants:
    p = names.prefix
    pub = [f"{p}.{path}.{t}.*.{kind}.{pid}" for path in ("rpc", "in") for kind in WRITER_INPUTS]
    pub += [
        _kv(names, names.bucket_idem, t)[1],  # idempotent starts claim a key
        _kv(names, names.bucket_queues, t)[1],  # a start registers its queue
        # Schedule changes are asked of a hub, which decides them by the tenant's policy
        # and alone writes imm-schedules and the schedules' messages.
        names.schedule_change_subject(t, pid),
        f"{p}.rpc.{t}.*.session.{pid}",  # a signing session's handshake (by request only)
    ]
    return Grants(pub=pub)


def _admin(names: Names, t: str) -> Grants:
    # The tenant's policy; the audit's new records as notifications (``immortal audit -f``).
    return Grants(pub=[_kv(names, names.bucket_policy, t)[1]], sub=[names.audit_subject(t)])


def _worker(names: Names, t: str, queue: str, pid: str) -> Grants:
    p, q = names.prefix, encode_token(queue)
    pub: list[str] = []
    for kind in ("wf", "act"):
        consumer = names.task_consumer(t, queue, kind)
        stream = names.stream_tasks
        pub += [
            # The filtered form: the server checks the filter against the config's.
            f"$JS.API.CONSUMER.CREATE.{stream}.{consumer}.{names.task_subject(t, queue, kind)}",
            f"$JS.API.CONSUMER.INFO.{stream}.{consumer}",  # its lease, when it exists
            f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}",
            f"$JS.ACK.{stream}.{consumer}.>",
        ]
    pub += [
        f"{p}.{path}.{t}.{q}.{kind}.{pid}"
        for path in ("rpc", "in")
        for kind in WORKER_OWN_QUEUE_INPUTS
    ]
    pub += [
        f"{p}.{path}.{t}.*.{kind}.{pid}"
        for path in ("rpc", "in")
        for kind in WORKER_ANY_QUEUE_INPUTS
    ]
    pub += [
        f"{p}.rpc.{t}.*.session.{pid}",  # a signing session's handshake (by request only)
        names.task_subject(t, queue, "wf"),  # hands a pushed workflow task back durably
        f"{p}.log.{t}.>",
        f"$KV.{names.bucket_workers}.{t}.{q}.*",  # its registration (liveness)
        f"$KV.{names.bucket_queues}.{t}.{q}",
    ]
    return Grants(
        pub=pub,
        sub=[names.push_subject(t, queue), f"{names.push_subject(t, queue)}.*"],
        responses=True,
    )


def permission_table(names: Names | None = None) -> str:
    """The permission table per role, in Markdown, for tenant ``T``, queue ``Q`` and the
    connection's principal id ``PID``: each role's row lists what it adds to the role it
    builds on."""
    names = names or Names()

    def grants(role: Role) -> Grants:
        principal = Principal(
            subject="s", tenant="T", roles=frozenset({role.value}), queues=("Q",), pid="PID"
        )
        return grants_for(principal, names)

    rows = []
    for role, base in (
        (Role.READER, None),
        (Role.WRITER, Role.READER),
        (Role.ADMIN, Role.WRITER),
        (Role.WORKER, Role.READER),
        (Role.HUB, None),
    ):
        g, b = grants(role), grants(base) if base else Grants()
        pub = "<br>".join(f"`{s}`" for s in g.pub if s not in b.pub)
        sub = "<br>".join(f"`{s}`" for s in g.sub if s not in b.sub) or "-"
        if g.pub_deny:
            pub += "<br>deny " + ", ".join(f"`{s}`" for s in g.pub_deny)
            sub += "<br>deny " + ", ".join(f"`{s}`" for s in g.sub_deny)
        name = f"{role.value} (= {base.value} +)" if base else role.value
        rows.append(f"| {name} | {pub} | {sub} | {'yes' if g.responses else 'no'} |")
    head = "| role | publish | subscribe | answers requests |\n|---|---|---|---|\n"
    return head + "\n".join(rows) + "\n"
