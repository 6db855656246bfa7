"""Immortal: durable workflows for Python on NATS JetStream.

>>> import immortal
>>> @immortal.activity
... async def greet(name: str) -> str:
...     return f"hello {name}"
>>> @immortal.workflow
... async def hello(ctx: immortal.WorkflowContext, name: str) -> str:
...     return await ctx.activity(greet, name)
"""

from immortal._client import (
    Client,
    IdReusePolicy,
    QueueStats,
    RunDescription,
    WorkerInfo,
    WorkflowHandle,
)
from immortal._context import WorkflowContext, WorkflowInfo
from immortal._definitions import ActivityDecorator, WorkflowDecorator
from immortal._errors import (
    ActivityCancelledError,
    ActivityError,
    ApplicationError,
    ChildWorkflowError,
    ImmortalError,
    LeaseMismatchError,
    NonDeterminismError,
    NotSetUpError,
    PayloadError,
    ServerUnreachableError,
    UnknownWorkflowTypeError,
    WorkflowAlreadyStartedError,
    WorkflowClosedError,
    WorkflowFailedError,
    WorkflowNotFoundError,
)
from immortal._names import Names
from immortal._retry import RetryPolicy
from immortal._schedules import ScheduleInfo
from immortal._timeline import format_timeline, history_from_json, history_to_json
from immortal._wire import EventType, HistoryEvent, RunStatus

workflow = WorkflowDecorator()
activity = ActivityDecorator()

__all__ = [
    "ActivityCancelledError",
    "ActivityError",
    "ApplicationError",
    "ChildWorkflowError",
    "Client",
    "EventType",
    "HistoryEvent",
    "IdReusePolicy",
    "ImmortalError",
    "LeaseMismatchError",
    "Names",
    "NonDeterminismError",
    "NotSetUpError",
    "PayloadError",
    "QueueStats",
    "RetryPolicy",
    "RunDescription",
    "RunStatus",
    "ScheduleInfo",
    "ServerUnreachableError",
    "UnknownWorkflowTypeError",
    "WorkerInfo",
    "WorkflowAlreadyStartedError",
    "WorkflowClosedError",
    "WorkflowContext",
    "WorkflowFailedError",
    "WorkflowHandle",
    "WorkflowInfo",
    "WorkflowNotFoundError",
    "activity",
    "format_timeline",
    "history_from_json",
    "history_to_json",
    "workflow",
]
