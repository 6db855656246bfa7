"""Wire and history models: what the hub, workers and clients say to each other.

Every message body is one of these models packed with msgpack. User payloads stay opaque
``bytes`` here (see ``immortal._codec``) so the hub never decodes user data.
"""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from immortal._codec import pack, unpack
from immortal._errors import PayloadError

__all__ = [
    "CLOSING_EVENTS",
    "ActivityHeartbeat",
    "ActivityResult",
    "ActivityStarted",
    "ActivityTask",
    "AnyCommand",
    "AppliedTransition",
    "CancelActivity",
    "CancelTimer",
    "CancelWorkflow",
    "ChildClosed",
    "Command",
    "CompleteWorkflow",
    "ContinueAsNew",
    "EventType",
    "FailWorkflow",
    "Failure",
    "HistoryEvent",
    "OpenActivity",
    "OpenChild",
    "OpenTimer",
    "ParentRef",
    "RecordMarker",
    "RequestCancel",
    "RequestTerminate",
    "RunAhead",
    "RunState",
    "RunStatus",
    "ScheduleActivity",
    "SetStatus",
    "SignalWorkflow",
    "StartChild",
    "StartTimer",
    "StartWorkflow",
    "TimerFired",
    "Transition",
    "WorkflowTask",
    "WorkflowTaskResult",
    "decode",
    "encode",
    "now_ms",
]

WIRE_VERSION = 1
M = TypeVar("M", bound=BaseModel)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", ser_json_bytes="base64", val_json_bytes="base64")


def encode(model: BaseModel) -> bytes:
    return pack(model.model_dump(exclude_none=True))


def decode(model: type[M], data: bytes) -> M:
    """Decode ``data`` as ``model``; anything malformed is a :class:`PayloadError`."""
    try:
        return model.model_validate(unpack(data))
    except ValidationError as exc:
        raise PayloadError(f"malformed {model.__name__}: {exc}") from exc


class Failure(_Model):
    """An error as it crosses a process boundary."""

    type: str
    message: str
    non_retryable: bool = False
    details: Any = None
    traceback: str | None = None
    cause: Failure | None = None
    # With a payload codec: message, details, traceback and cause, sealed (immortal.codec);
    # ``message`` then only says so.
    sealed: bytes | None = None


# -- history ---------------------------------------------------------------------------


class EventType(StrEnum):
    WORKFLOW_STARTED = "WorkflowStarted"
    WORKFLOW_TASK_SCHEDULED = "WorkflowTaskScheduled"
    WORKFLOW_TASK_COMPLETED = "WorkflowTaskCompleted"
    WORKFLOW_TASK_FAILED = "WorkflowTaskFailed"
    ACTIVITY_SCHEDULED = "ActivityScheduled"
    ACTIVITY_ATTEMPT_FAILED = "ActivityAttemptFailed"
    ACTIVITY_ATTEMPT_SCHEDULED = "ActivityAttemptScheduled"
    ACTIVITY_ATTEMPT_STARTED = "ActivityAttemptStarted"
    ACTIVITY_HEARTBEAT = "ActivityHeartbeat"
    ACTIVITY_COMPLETED = "ActivityCompleted"
    ACTIVITY_FAILED = "ActivityFailed"
    ACTIVITY_RESULT_IGNORED = "ActivityResultIgnored"
    ACTIVITY_CANCELLED = "ActivityCancelled"
    ACTIVITY_CANCELED = ACTIVITY_CANCELLED  # the names of before, for code that uses them
    TIMER_STARTED = "TimerStarted"
    TIMER_FIRED = "TimerFired"
    TIMER_CANCELLED = "TimerCancelled"
    TIMER_CANCELED = TIMER_CANCELLED
    WORKFLOW_SIGNALED = "WorkflowSignaled"
    WORKFLOW_CANCEL_REQUESTED = "WorkflowCancelRequested"
    CHILD_WORKFLOW_SCHEDULED = "ChildWorkflowScheduled"
    CHILD_WORKFLOW_COMPLETED = "ChildWorkflowCompleted"
    CHILD_WORKFLOW_FAILED = "ChildWorkflowFailed"
    MARKER_RECORDED = "MarkerRecorded"
    STATUS_SET = "WorkflowStatusSet"
    WORKFLOW_COMPLETED = "WorkflowCompleted"
    WORKFLOW_FAILED = "WorkflowFailed"
    WORKFLOW_CANCELLED = "WorkflowCancelled"
    WORKFLOW_CANCELED = WORKFLOW_CANCELLED
    WORKFLOW_CONTINUED_AS_NEW = "WorkflowContinuedAsNew"
    WORKFLOW_TERMINATED = "WorkflowTerminated"
    # A tenant's policy decided about the run: its start (allowed), or anything it refused.
    POLICY_DECISION = "PolicyDecision"
    SIGNAL_REFUSED = "SignalRefused"  # a signal the policy refused: delivered to no code

    @classmethod
    def _missing_(cls, value: object) -> EventType | None:
        # Histories recorded before "cancelled" had one spelling still decode.
        return _OLD_EVENT_TYPES.get(str(value))


_OLD_EVENT_TYPES = {
    "ActivityCanceled": EventType.ACTIVITY_CANCELLED,
    "TimerCanceled": EventType.TIMER_CANCELLED,
    "WorkflowCanceled": EventType.WORKFLOW_CANCELLED,
}

# Events that echo a command the workflow code issued, in the order it issued them.
COMMAND_EVENTS = frozenset(
    {
        EventType.ACTIVITY_SCHEDULED,
        EventType.ACTIVITY_CANCELED,
        EventType.TIMER_STARTED,
        EventType.TIMER_CANCELED,
        EventType.CHILD_WORKFLOW_SCHEDULED,
        EventType.MARKER_RECORDED,
        EventType.STATUS_SET,
        EventType.WORKFLOW_COMPLETED,
        EventType.WORKFLOW_FAILED,
        EventType.WORKFLOW_CANCELED,
        EventType.WORKFLOW_CONTINUED_AS_NEW,
    }
)
# Events that close a run.
CLOSING_EVENTS = frozenset(
    {
        EventType.WORKFLOW_COMPLETED,
        EventType.WORKFLOW_FAILED,
        EventType.WORKFLOW_CANCELED,
        EventType.WORKFLOW_CONTINUED_AS_NEW,
        EventType.WORKFLOW_TERMINATED,
    }
)


class HistoryEvent(_Model):
    """One event of a run: contiguous ``id`` from 1, and the event that caused it."""

    id: int
    type: EventType
    ts: int  # milliseconds since the epoch, as the hub saw it
    caused_by: int | None = None
    attrs: dict[str, Any] = Field(default_factory=dict)


class RunStatus(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    CANCELED = CANCELLED  # the name of before, for code that uses it
    CONTINUED_AS_NEW = "continued_as_new"
    TERMINATED = "terminated"

    @classmethod
    def _missing_(cls, value: object) -> RunStatus | None:
        return cls.CANCELLED if value == "canceled" else None  # a snapshot of before

    @property
    def closed(self) -> bool:
        return self is not RunStatus.RUNNING


class OpenActivity(_Model):
    seq: int
    name: str
    queue: str
    input: bytes
    attempt: int = 1
    retry: dict[str, Any] | None = None  # RetryPolicy.to_wire(); None: the default policy
    retry_at: int | None = None  # set while waiting out a backoff (ms since the epoch)
    start_to_close: float | None = None  # seconds per attempt
    schedule_to_close: float | None = None  # seconds for all attempts together
    schedule_to_start: float | None = None  # seconds an attempt may wait for a worker
    started: bool = False  # only tracked when schedule_to_start is set
    heartbeat_timeout: float | None = None
    heartbeat_details: bytes | None = None  # the latest, handed to the next attempt
    last_heartbeat_ts: int = 0
    scheduled_ts: int = 0
    last_failure: Failure | None = None  # the last failed attempt's error (type, message)
    worker: str | None = None  # the last worker the hub heard from about this activity


class OpenTimer(_Model):
    seq: int
    due: int  # ms since the epoch


class ParentRef(_Model):
    """The run that started this one as a child, and the event that scheduled it."""

    workflow_id: str
    run_id: str
    queue: str
    scheduled_id: int


class OpenChild(_Model):
    seq: int
    workflow_id: str
    run_id: str
    workflow_type: str
    queue: str
    input: bytes
    execution_timeout: float | None = None


class RunState(_Model):
    """What the hub needs to take the next transition; a snapshot rides on each one.

    Everything here is derivable from the events, but carrying it means a hub that has
    never seen the run loads it with one direct get of the subject's last message.
    """

    workflow_id: str
    run_id: str
    workflow_type: str
    queue: str
    status: RunStatus = RunStatus.RUNNING
    next_event_id: int = 1
    last_ts: int = 0  # the newest event's time: history time never goes backwards
    started_ts: int = 0
    closed_ts: int | None = None
    execution_timeout: float | None = None
    run_timeout: float | None = None
    wft: int | None = None  # scheduled-event id of the open workflow task
    last_external: int = 0  # id of the newest event workflow code has to see
    last_wft_failure: str | None = None
    sticky: str | None = None  # the worker that completed the last workflow task (cached it)
    ran: bool = False  # a workflow task has completed: the code has run (and may clean up)
    pushed_by: str | None = None  # the hub that may have pushed the open workflow task
    activities: dict[int, OpenActivity] = Field(default_factory=dict)
    timers: dict[int, OpenTimer] = Field(default_factory=dict)  # by TimerStarted id
    children: dict[int, OpenChild] = Field(default_factory=dict)  # by scheduled id
    parent: ParentRef | None = None
    cancel_requested: bool = False
    status_value: bytes | None = None  # what the workflow last set with ctx.set_status
    continued_run_id: str | None = None  # the run this one continued as
    # Whom the run acts for when a policy decides what it does (its activities): the
    # starter's claims (subject, tenant, roles, groups, attributes, pid); a child and a
    # continued run inherit them. None with policies off.
    principal: dict[str, Any] | None = None
    # How it closed: the result (or a continued run's input) and the failure, kept so a
    # closing emission (the parent's notice, the next run's start) can be re-sent.
    close_payload: bytes | None = None
    close_failure: Failure | None = None
    applied: list[str] = Field(default_factory=list)  # recent input ids, newest last
    # The nonces of the signed inputs by request applied to this run, each with the time
    # (s) until which a copy could still pass a hub's signature window: a copy finds its
    # nonce here (immortal_hub._signatures, RunNonce). None for runs with none.
    nonces: list[tuple[str, int]] | None = None


class Transition(_Model):
    """One history message: the events of one hub step and the state after it."""

    v: int = WIRE_VERSION
    events: list[HistoryEvent]
    state: RunState
    prev: bytes = b""  # SHA-256 of the run's previous history message; empty on the first


# -- commands (worker -> hub, inside a workflow-task result) ---------------------------


class ScheduleActivity(_Model):
    kind: Literal["schedule_activity"] = "schedule_activity"
    seq: int
    name: str
    queue: str | None = None
    input: bytes
    retry: dict[str, Any] | None = None
    start_to_close: float | None = None
    schedule_to_close: float | None = None
    schedule_to_start: float | None = None
    heartbeat_timeout: float | None = None


class CancelActivity(_Model):
    """The code stopped waiting for an activity: close it, ask its attempt to stop."""

    kind: Literal["cancel_activity"] = "cancel_activity"
    seq: int


class StartTimer(_Model):
    kind: Literal["start_timer"] = "start_timer"
    seq: int
    duration_ms: int


class CancelTimer(_Model):
    kind: Literal["cancel_timer"] = "cancel_timer"
    seq: int


class StartChild(_Model):
    kind: Literal["start_child"] = "start_child"
    seq: int
    workflow_type: str
    workflow_id: str
    queue: str | None = None
    input: bytes
    execution_timeout: float | None = None


class RecordMarker(_Model):
    """A versioning marker: ``ctx.patched(id)`` returned True here."""

    kind: Literal["marker"] = "marker"
    patch: str


class SetStatus(_Model):
    kind: Literal["set_status"] = "set_status"
    value: bytes


class CompleteWorkflow(_Model):
    kind: Literal["complete"] = "complete"
    result: bytes


class FailWorkflow(_Model):
    kind: Literal["fail"] = "fail"
    failure: Failure


class CancelWorkflow(_Model):
    """The code let a cancellation request end the run."""

    kind: Literal["cancel"] = "cancel"
    reason: str = ""


class ContinueAsNew(_Model):
    kind: Literal["continue_as_new"] = "continue_as_new"
    input: bytes


AnyCommand = (
    ScheduleActivity
    | CancelActivity
    | StartTimer
    | CancelTimer
    | StartChild
    | RecordMarker
    | SetStatus
    | CompleteWorkflow
    | FailWorkflow
    | CancelWorkflow
    | ContinueAsNew
)
Command = Annotated[AnyCommand, Field(discriminator="kind")]


# -- inputs (to the hub, on IMM_IN) ----------------------------------------------------


class StartWorkflow(_Model):
    workflow_id: str
    run_id: str
    workflow_type: str
    input: bytes
    execution_timeout: float | None = None  # seconds for the whole execution
    run_timeout: float | None = None  # seconds for this run (continue-as-new starts a new one)
    parent: ParentRef | None = None  # set when a workflow started this one as its child
    continued_from: str | None = None  # the run this one continues
    schedule_id: str | None = None  # the schedule whose firing made this start (by the hub)
    by: dict[str, Any] | None = None  # who sent it: set by the hub from the sender, never trusted
    # The run a hub starts for another (a child, a continuation) acts for the same principal
    # (``RunState.principal``); the hub clears it on any input a hub did not send.
    acting_for: dict[str, Any] | None = None
    # The tenant's policy allowed it: {reason, rule_ids, policy_version}, recorded as the
    # run's PolicyDecision event. Set by the hub, never trusted from the sender.
    decision: dict[str, Any] | None = None
    # Fields of a sealed input the sender reveals to the policy, in plaintext; the worker
    # fails the run if the opened input differs (``immortal._revealed``).
    policy_input: dict[str, Any] | None = None


class SignalWorkflow(_Model):
    workflow_id: str
    run_id: str
    name: str
    input: bytes
    signal_id: str
    # The sender knows the run's start is durable (queued in IMM_IN) though not applied
    # yet: the hub waits for the start instead of dead-lettering the input at once.
    pending_start: bool = False
    by: dict[str, Any] | None = None  # set by the hub (see StartWorkflow.by)


class RequestCancel(_Model):
    workflow_id: str
    run_id: str
    reason: str = ""
    request_id: str
    pending_start: bool = False  # as for SignalWorkflow
    by: dict[str, Any] | None = None  # set by the hub (see StartWorkflow.by)


class RequestTerminate(_Model):
    """Close the run at once, without running its code (``handle.terminate``)."""

    workflow_id: str
    run_id: str
    reason: str = ""
    request_id: str
    pending_start: bool = False  # as for SignalWorkflow
    by: dict[str, Any] | None = None  # set by the hub (see StartWorkflow.by)


class ChildClosed(_Model):
    """A child run closed: sent by its hub to the parent's queue (``workflow_id``/``run_id``
    are the parent's)."""

    workflow_id: str
    run_id: str
    scheduled_id: int
    child_workflow_id: str
    child_run_id: str
    status: str
    result: bytes | None = None
    failure: Failure | None = None


class WorkflowTaskResult(_Model):
    workflow_id: str
    run_id: str
    wft: int  # the workflow task's scheduled-event id
    through: int  # the last event id the worker had seen when it ran the code
    result_id: str
    worker: str
    commands: list[Command] = Field(default_factory=list)
    failure: Failure | None = None
    key_id: str | None = None  # the key that signed it: set by the hub, never trusted


class RunAhead(_Model):
    """Workflow code that the worker holding the run ran on with an activity's result, as if
    the result were the run's only news: the commands of the workflow task the hub would
    schedule for it (``wft``, the id it would get), seeing the events at ``ts``: the time on
    the hub's clock as the worker reckons it (its newest event's time plus the time elapsed
    since it learned of it), never earlier than that event. The hub records result and task
    in one transition if the run is as the worker saw it and ``ts`` is within its bounds,
    and otherwise records the result alone and schedules the task as usual."""

    wft: int
    ts: int
    commands: list[Command] = Field(default_factory=list)


class ActivityResult(_Model):
    workflow_id: str
    run_id: str
    scheduled_id: int
    attempt: int
    delivery: int
    result_id: str
    worker: str
    started_ts: int
    ended_ts: int
    result: bytes | None = None
    failure: Failure | None = None
    then: RunAhead | None = None
    key_id: str | None = None  # set by the hub (see WorkflowTaskResult.key_id)


class TimerFired(_Model):
    """The body of a durable timer; it comes back to the hub on ``imm.fired.<t>.<q>``."""

    workflow_id: str
    run_id: str
    timer: str
    kind: Literal[
        "retry",
        "start_to_close",
        "schedule_to_close",
        "schedule_to_start",
        "execution_timeout",
        "run_timeout",
        "heartbeat_timeout",
        "timer",
        "schedule",
        "retention",
    ] = "retry"
    scheduled_id: int = 0  # the activity it concerns...
    attempt: int = 0  # ...and the attempt
    # When it is due on the hub's clock (ms): a firing earlier than that (a server whose
    # clock runs ahead) waits until then. 0: fire when it arrives (schedules).
    due: int = 0


class ActivityStarted(_Model):
    """A worker began an attempt whose activity has a schedule-to-start timeout."""

    workflow_id: str
    run_id: str
    scheduled_id: int
    attempt: int
    delivery: int
    worker: str
    result_id: str


class ActivityHeartbeat(_Model):
    """Progress of a running attempt; the hub's reply says whether the attempt still counts."""

    workflow_id: str
    run_id: str
    scheduled_id: int
    attempt: int
    worker: str
    result_id: str
    details: bytes | None = None


# -- tasks (hub -> workers, on IMM_TASKS) ----------------------------------------------


class WorkflowTask(_Model):
    workflow_id: str
    run_id: str
    workflow_type: str
    queue: str
    wft: int
    hist_seq: int  # stream sequence of the transition that scheduled this task
    # The events of that transition and the sequence before it: a worker whose cache is at
    # ``prev_seq`` needs no read. Empty on re-emission; the worker then reads history.
    prev_seq: int = 0
    events: list[HistoryEvent] = Field(default_factory=list)


class AppliedTransition(_Model):
    """The hub's reply to an input sent by request: what it appended, if anything."""

    prev_seq: int
    seq: int
    events: list[HistoryEvent]


class ActivityTask(_Model):
    workflow_id: str
    run_id: str
    workflow_type: str
    workflow_queue: str
    scheduled_id: int
    seq: int
    name: str
    input: bytes
    attempt: int = 1
    start_to_close: float | None = None  # the worker arms this timer when the attempt starts
    schedule_to_start: float | None = None  # the worker reports the start to the hub
    heartbeat_timeout: float | None = None
    heartbeat_details: bytes | None = None
