"""Every run of one workflow id (its continue-as-new chain, and runs that reused the id),
read from history: the newest transition of each run subject carries the run's state."""

from __future__ import annotations

from nats.aio.client import Client as NATS

from immortal._jetstream import StoredMsg, TooManySubjects, last_per_subject, read_subject
from immortal._names import Names
from immortal._transient import retry_transient
from immortal._wire import RunState, Transition, decode
from immortal.runs._record import RunInfo, run_info

__all__ = ["runs_of"]


async def runs_of(nc: NATS, names: Names, tenant: str, workflow_id: str) -> list[RunInfo]:
    """The runs of ``workflow_id`` whose history exists, newest started first."""
    stream = names.stream_history
    subjects = names.workflow_history_filter(tenant, workflow_id)

    async def newest_per_run() -> list[StoredMsg]:
        try:  # one request for up to 1,024 runs
            return await last_per_subject(nc, stream, subjects)
        except TooManySubjects:  # a longer chain: read it all, keep each run's last
            last: dict[str, StoredMsg] = {}
            async for msg in read_subject(nc, stream, subjects):
                last[msg.subject] = msg
            return list(last.values())

    messages = await retry_transient(newest_per_run, what=subjects)
    states = [decode(Transition, m.data).state for m in messages]
    continued_from = {s.continued_run_id: s.run_id for s in states if s.continued_run_id}
    runs = [_info(s, continued_from.get(s.run_id)) for s in states]
    return sorted(runs, key=lambda r: r.started_at, reverse=True)


def _info(state: RunState, continued_from: str | None) -> RunInfo:
    return run_info(
        {
            "workflow_id": state.workflow_id,
            "run_id": state.run_id,
            "workflow_type": state.workflow_type,
            "queue": state.queue,
            "status": str(state.status),
            "started_ts": state.started_ts,
            "closed_ts": state.closed_ts,
            "continued_from": continued_from,
            "continued_to": state.continued_run_id,
        }
    )
