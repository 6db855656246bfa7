"""Finding runs: the runs index the hubs keep (``IMM_RUNS``) and the listings over it.

>>> page = await client.list_workflows(status="failed", type="place_order", limit=20)
>>> for run in page.runs: ...
>>> await client.workflow_runs("order-42")   # every run of one workflow id
"""

from immortal.runs._chain import runs_of
from immortal.runs._describe import PendingActivity, PendingTimer, RunDescription, describe_run
from immortal.runs._listing import RunPage, list_runs, parse_status
from immortal.runs._lookup import find_closed_record
from immortal.runs._record import RunInfo, closed_record, open_record

__all__ = [
    "PendingActivity",
    "PendingTimer",
    "RunDescription",
    "RunInfo",
    "RunPage",
    "closed_record",
    "describe_run",
    "find_closed_record",
    "list_runs",
    "open_record",
    "parse_status",
    "runs_of",
]
