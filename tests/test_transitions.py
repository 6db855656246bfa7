"""The hub's state machine, pure: no server needed."""

from __future__ import annotations

import pytest

from immortal._codec import encode_args, encode_value
from immortal._retry import RetryPolicy
from immortal._wire import (
    ActivityHeartbeat,
    ActivityResult,
    ActivityStarted,
    ChildClosed,
    CompleteWorkflow,
    EventType,
    Failure,
    RequestCancel,
    RequestTerminate,
    RunStatus,
    ScheduleActivity,
    SignalWorkflow,
    StartChild,
    StartTimer,
    StartWorkflow,
    TimerFired,
    WorkflowTaskResult,
)
from immortal_hub._emissions import emissions_for, open_emissions
from immortal_hub._transitions import (
    InvalidInput,
    StaleAttempt,
    apply_activity_heartbeat,
    apply_activity_result,
    apply_activity_started,
    apply_cancel_request,
    apply_child_closed,
    apply_signal,
    apply_start,
    apply_terminate,
    apply_timer_fired,
    apply_workflow_task_result,
)


def _start():  # type: ignore[no-untyped-def]
    return apply_start(
        None,
        StartWorkflow(workflow_id="w", run_id="r", workflow_type="t", input=encode_args([1])),
        "q",
        1000,
    )


def _wft(state, through, *commands, rid="x", wft=None, failure=None):  # type: ignore[no-untyped-def]
    body = WorkflowTaskResult(
        workflow_id="w", run_id="r", wft=wft or state.wft, through=through, result_id=rid,
        worker="wk", commands=list(commands), failure=failure,
    )  # fmt: skip
    return apply_workflow_task_result(state, body, 2000)


def _act(state, scheduled_id, rid="a", value=5, attempt=1):  # type: ignore[no-untyped-def]
    body = ActivityResult(
        workflow_id="w", run_id="r", scheduled_id=scheduled_id, attempt=attempt, delivery=1,
        result_id=rid, worker="wk", started_ts=1, ended_ts=2, result=encode_value(value),
    )  # fmt: skip
    return apply_activity_result(state, body, 3000)


def test_start_appends_started_and_a_workflow_task() -> None:
    out = _start()
    assert [e.type for e in out.events] == [
        EventType.WORKFLOW_STARTED,
        EventType.WORKFLOW_TASK_SCHEDULED,
    ]
    assert out.state is not None and out.state.wft == 2
    tasks = emissions_for(out.state, out.events, hist_seq=7, prev_seq=0)
    assert tasks[0].body.events == out.events  # a fresh worker needs no read
    assert [(t.kind, t.msg_id) for t in tasks] == [("wf", "r:2")]
    assert _start().state == out.state  # deterministic
    assert apply_start(
        out.state, StartWorkflow(workflow_id="w", run_id="r", workflow_type="t", input=b""), "q", 1
    ).duplicate


def test_commands_become_events_and_tasks() -> None:
    s = _start().state
    out = _wft(
        s,
        2,
        ScheduleActivity(seq=1, name="a", input=b"\x90"),
        ScheduleActivity(seq=2, name="b", queue="other", input=b"\x90"),
    )
    types = [e.type for e in out.events]
    assert types == [
        EventType.WORKFLOW_TASK_COMPLETED,
        EventType.ACTIVITY_SCHEDULED,
        EventType.ACTIVITY_SCHEDULED,
    ]
    assert out.state is not None and out.state.wft is None and set(out.state.activities) == {4, 5}
    tasks = emissions_for(out.state, out.events, 9, 8)
    assert [(t.kind, t.queue) for t in tasks] == [("act", "q"), ("act", "other")]


def test_activity_result_schedules_one_workflow_task_then_piggybacks() -> None:
    s = _wft(
        _start().state,
        2,
        ScheduleActivity(seq=1, name="a", input=b""),
        ScheduleActivity(seq=2, name="b", input=b""),
    ).state
    first = _act(s, 4, rid="r1")
    assert [e.type for e in first.events] == [
        EventType.ACTIVITY_COMPLETED,
        EventType.WORKFLOW_TASK_SCHEDULED,
    ]
    second = _act(first.state, 5, rid="r2")
    assert [e.type for e in second.events] == [
        EventType.ACTIVITY_COMPLETED
    ]  # a task is already open
    # The worker saw only up to the first completion: a new task follows for the second.
    done = _wft(second.state, 7, rid="second-task")
    assert [e.type for e in done.events] == [
        EventType.WORKFLOW_TASK_COMPLETED,
        EventType.WORKFLOW_TASK_SCHEDULED,
    ]


def test_redelivered_and_late_inputs_change_nothing_twice() -> None:
    s = _wft(_start().state, 2, ScheduleActivity(seq=1, name="a", input=b"")).state
    once = _act(s, 4, rid="same")
    assert _act(once.state, 4, rid="same").duplicate
    late = _act(once.state, 4, rid="another-delivery")
    assert [e.type for e in late.events] == [EventType.ACTIVITY_RESULT_IGNORED]
    assert late.events[0].attrs["reason"] == "activity already closed"
    assert open_emissions(once.state, 3)[0].msg_id == "r:6"


def test_stale_workflow_task_results_are_refused_as_stale() -> None:
    s = _start().state
    with pytest.raises(StaleAttempt, match="stale workflow task 99"):
        _wft(s, 2, wft=99)
    with pytest.raises(InvalidInput):
        _wft(s, 50)


def test_workflow_task_failures_are_recorded_once_and_the_task_stays_open() -> None:
    s = _start().state
    f = Failure(type="NonDeterminismError", message="m")
    first = _wft(s, 0, failure=f, rid="f1")
    assert [e.type for e in first.events] == [EventType.WORKFLOW_TASK_FAILED]
    assert first.state is not None and first.state.wft == 2
    repeated = _wft(first.state, 0, failure=f, rid="f2")
    assert repeated.events == [] and not repeated.reemit  # its sender holds the task


def test_completion_closes_the_run_and_abandons_activities() -> None:
    s = _wft(_start().state, 2, ScheduleActivity(seq=1, name="a", input=b"")).state
    s = _act(s, 4).state
    out = _wft(s, 6, CompleteWorkflow(result=encode_value(1)), rid="final-task")
    assert out.closes_run and out.state is not None and out.state.status is RunStatus.COMPLETED
    late = _act(out.state, 4, rid="zz")  # nothing is appended to a closed run
    assert late.events == [] and late.note is not None and "closed run" in late.note


def _redelivered(state, attempt, delivery):  # type: ignore[no-untyped-def]
    body = ActivityStarted(
        workflow_id="w", run_id="r", scheduled_id=4, attempt=attempt, delivery=delivery,
        worker="wk2", result_id=f"started:{attempt}:{delivery}",
    )  # fmt: skip
    return apply_activity_started(state, body, 4000)


def test_a_redelivered_attempt_counts_as_lost_until_the_policy_gives_up() -> None:
    retry = RetryPolicy(maximum_attempts=2, initial_interval=5.0).to_wire()
    s = _wft(_start().state, 2, ScheduleActivity(seq=1, name="a", input=b"\x90", retry=retry)).state
    first = _redelivered(s, 1, 1)  # a first delivery: confirmed, nothing to record
    assert first.events == [] and first.confirmed == (4, 4000)
    timed = _wft(
        _start().state, 2, ScheduleActivity(seq=1, name="a", input=b"\x90", schedule_to_start=5)
    ).state
    recorded = _redelivered(timed, 1, 1).events  # its start disarms the schedule-to-start
    assert [e.type for e in recorded] == [EventType.ACTIVITY_ATTEMPT_STARTED]

    out = _redelivered(s, 1, 2)  # delivery 1 ended without a result: its worker died
    [lost] = out.events
    assert lost.type is EventType.ACTIVITY_ATTEMPT_FAILED and lost.caused_by == 4
    assert lost.attrs["failure"]["type"] == "WorkerLost" and lost.attrs["next_attempt"] == 2
    assert out.state is not None and out.state.activities[4].retry_at == 4000  # no backoff
    with pytest.raises(StaleAttempt):  # that attempt is gone: its deliveries must not run
        _redelivered(out.state, 1, 3)

    out.state.activities[4].retry_at = None  # the retry timer fired: attempt 2 runs
    failed, *_ = _redelivered(out.state, 2, 2).events  # and is lost too: 2 attempts used
    assert failed.type is EventType.ACTIVITY_FAILED
    assert failed.attrs["failure"]["type"] == "WorkerLost"


def test_transitions_never_change_the_state_they_are_given() -> None:
    """The hub caches the state it last appended and applies the next input to it; a
    transition works on its own copy (sharing what it never changes in place)."""
    retry = RetryPolicy(initial_interval=1, jitter=0, maximum_attempts=3).to_wire()
    run = _wft(
        _start().state,
        2,
        ScheduleActivity(seq=1, name="a", input=b"\x90", retry=retry, heartbeat_timeout=5),
        StartTimer(seq=2, duration_ms=1000),
        StartChild(seq=3, workflow_type="c", workflow_id="cw", input=b"\x90"),
    ).state
    assert run is not None and run.activities and run.timers and run.children
    timer_id, child_id = next(iter(run.timers)), next(iter(run.children))
    common = {"workflow_id": "w", "run_id": "r"}
    failed = ActivityResult(
        **common, scheduled_id=4, attempt=1, delivery=1, result_id="f", worker="wk",
        started_ts=1, ended_ts=2, failure=Failure(type="Boom", message="m"),
    )  # fmt: skip
    inputs = [
        lambda s: apply_activity_result(s, failed, 3000),
        lambda s: _act(s, 4),
        lambda s: apply_activity_heartbeat(
            s, ActivityHeartbeat(**common, scheduled_id=4, attempt=1, worker="wk", result_id="h"), 3000
        ),
        lambda s: apply_activity_started(
            s, ActivityStarted(**common, scheduled_id=4, attempt=1, delivery=2, worker="wk", result_id="st"), 3000
        ),
        lambda s: apply_timer_fired(s, TimerFired(**common, timer=f"t-{timer_id}", kind="timer", scheduled_id=timer_id), 3000),
        lambda s: apply_child_closed(
            s, ChildClosed(**common, scheduled_id=child_id, child_workflow_id="cw", child_run_id="cr", status="completed"), 3000
        ),
        lambda s: apply_signal(s, SignalWorkflow(**common, name="go", input=b"\x90", signal_id="sg"), 3000),
        lambda s: apply_cancel_request(s, RequestCancel(**common, request_id="rc"), 3000),
    ]  # fmt: skip
    for apply in inputs:
        before = run.model_dump()
        out = apply(run)
        assert run.model_dump() == before
        assert out.events and out.state is not None and out.state is not run
    news = _act(run, 4).state  # a workflow task open: the code completes the run
    before = news.model_dump()
    assert _wft(news, news.last_external, CompleteWorkflow(result=b"\x90"), rid="done").events
    assert news.model_dump() == before


def test_a_cancel_before_any_workflow_task_completed_closes_the_run_at_once() -> None:
    s = _start().state
    out = apply_cancel_request(
        s, RequestCancel(workflow_id="w", run_id="r", reason="typo", request_id="c1"), 1500
    )
    assert [e.type for e in out.events] == [
        EventType.WORKFLOW_CANCEL_REQUESTED,
        EventType.WORKFLOW_CANCELED,
    ]
    assert out.state is not None and out.state.status is RunStatus.CANCELED
    assert out.state.wft is None and out.events[1].attrs == {"reason": "typo", "before_code": True}
    # Once the code has run, a cancel is news for it (it may clean up): the run stays open.
    ran = _wft(s, 2, ScheduleActivity(seq=1, name="a", input=b"\x90")).state
    out = apply_cancel_request(
        ran, RequestCancel(workflow_id="w", run_id="r", request_id="c2"), 2500
    )
    assert [e.type for e in out.events] == [
        EventType.WORKFLOW_CANCEL_REQUESTED,
        EventType.WORKFLOW_TASK_SCHEDULED,
    ]
    assert out.state is not None and out.state.status is RunStatus.RUNNING


def test_terminate_closes_any_open_run_and_only_once() -> None:
    s = _wft(_start().state, 2, ScheduleActivity(seq=1, name="a", input=b"\x90")).state
    req = RequestTerminate(workflow_id="w", run_id="r", reason="stuck", request_id="t1")
    out = apply_terminate(s, req, 4000)
    assert [(e.type, e.attrs) for e in out.events] == [
        (EventType.WORKFLOW_TERMINATED, {"reason": "stuck"})
    ]
    assert out.closes_run and out.state is not None
    assert out.state.status is RunStatus.TERMINATED and out.state.activities == {}
    assert out.state.close_failure is not None
    assert out.state.close_failure.type == "WorkflowTerminated"
    assert apply_terminate(out.state, req, 4001).duplicate
    again = RequestTerminate(workflow_id="w", run_id="r", request_id="t2")
    assert apply_terminate(out.state, again, 4002).events == []
    with pytest.raises(InvalidInput):
        apply_terminate(None, req, 4000)
