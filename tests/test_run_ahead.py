"""Running ahead: the worker that holds a run continues its workflow code with an activity's
result and sends the commands along; the hub records both in one transition when the run
is as the worker saw it, and otherwise the result alone (the task then goes as usual)."""

from __future__ import annotations

import pytest

import immortal
import immortal_hub._transitions
from immortal import Client, EventType, WorkflowContext
from immortal._codec import encode_value
from immortal._jetstream import read_subject
from immortal._wire import (
    ActivityResult,
    CompleteWorkflow,
    RunAhead,
    ScheduleActivity,
    Transition,
    decode,
)
from immortal_hub import Hub
from immortal_hub._transitions import apply_activity_result
from immortal_worker.replay import replay
from tests.helpers import assert_well_formed, running_worker
from tests.test_transitions import _start, _wft
from tests.workflows import double


@immortal.workflow
async def two_steps_then_now(ctx: WorkflowContext, x: int) -> list[int]:
    a = await ctx.activity(double, x)
    b = await ctx.activity(double, a)
    return [a, b, round(ctx.now().timestamp() * 1000)]


async def _transitions(client: Client, handle: immortal.WorkflowHandle) -> list[Transition]:  # type: ignore[type-arg]
    subject = client.names.history_subject(client.tenant, handle.workflow_id, handle.run_id)
    stored = read_subject(client.nc, client.names.stream_history, subject)
    return [decode(Transition, m.data) async for m in stored]


async def test_a_result_and_the_workflow_task_it_makes_are_one_transition(
    nats_url: str, prefix: str, client: Client, hub: Hub
) -> None:
    async with running_worker(nats_url, prefix, workflows=[two_steps_then_now]) as worker:
        handle = await client.start(two_steps_then_now, 3)
        a, b, now = await handle.result(timeout=20)
    assert (a, b) == (6, 12)
    history = await handle.history()
    assert_well_formed(history)
    steps = [[e.type for e in t.events] for t in await _transitions(client, handle)]
    ran_ahead = [
        EventType.ACTIVITY_COMPLETED,
        EventType.WORKFLOW_TASK_SCHEDULED,
        EventType.WORKFLOW_TASK_COMPLETED,
    ]
    assert steps == [
        [EventType.WORKFLOW_STARTED, EventType.WORKFLOW_TASK_SCHEDULED],
        [EventType.WORKFLOW_TASK_COMPLETED, EventType.ACTIVITY_SCHEDULED],
        [*ran_ahead, EventType.ACTIVITY_SCHEDULED],
        [*ran_ahead, EventType.WORKFLOW_COMPLETED],
    ]
    # The code saw the time recorded on the events it ran ahead on, so a replay from history
    # agrees with it; what it then did (completing the run) is stamped by the hub's clock.
    assert now == history[-4].ts == history[-3].ts <= history[-1].ts
    assert [e.ts for e in history] == sorted(e.ts for e in history)
    assert replay(history, two_steps_then_now).ok
    assert hub._pushes.pushed == 1 and worker.replays == 1


async def test_a_run_ahead_the_hub_refuses_is_replayed(
    nats_url: str, prefix: str, client: Client, hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(immortal_hub._transitions, "_AHEAD_LAG_MS", -1)  # refuse them all
    async with running_worker(nats_url, prefix, workflows=[two_steps_then_now]) as worker:
        handle = await client.start(two_steps_then_now, 3)
        assert (await handle.result(timeout=20))[:2] == [6, 12]
    history = await handle.history()
    assert_well_formed(history)
    assert replay(history, two_steps_then_now).ok
    assert len(await _transitions(client, handle)) == 6  # as without running ahead
    assert worker.replays == 3  # the copy that ran ahead is dropped; each task replays


def test_the_hub_takes_a_run_ahead_only_if_the_run_is_as_the_worker_saw_it() -> None:
    s = _wft(_start().state, 2, ScheduleActivity(seq=1, name="a", input=b"\x90")).state
    assert s is not None and s.next_event_id == 5 and s.wft is None

    def result(ahead: RunAhead | None, rid: str = "a") -> ActivityResult:
        return ActivityResult(
            workflow_id="w", run_id="r", scheduled_id=4, attempt=1, delivery=1, result_id=rid,
            worker="wk", started_ts=1, ended_ts=2, result=encode_value(5), then=ahead,
        )  # fmt: skip

    done = [CompleteWorkflow(result=encode_value(5))]
    taken = apply_activity_result(s, result(RunAhead(wft=6, ts=2990, commands=done)), 3000)
    # The events the code ran ahead on carry the time it saw; what it did, the hub's clock.
    assert [(e.id, e.type, e.ts) for e in taken.events] == [
        (5, EventType.ACTIVITY_COMPLETED, 2990),
        (6, EventType.WORKFLOW_TASK_SCHEDULED, 2990),
        (7, EventType.WORKFLOW_TASK_COMPLETED, 3000),
        (8, EventType.WORKFLOW_COMPLETED, 3000),
    ]
    assert taken.closes_run and taken.state is not None and taken.state.sticky == "wk"
    alone = [EventType.ACTIVITY_COMPLETED, EventType.WORKFLOW_TASK_SCHEDULED]
    assert s.last_ts == 2000  # the newest event's time
    for refused in (
        RunAhead(wft=7, ts=3000, commands=done),  # the worker missed an event
        RunAhead(wft=6, ts=3100, commands=done),  # a time after the hub's clock
        RunAhead(wft=6, ts=1990, commands=done),  # before the newest event: time went back
        RunAhead(wft=6, ts=2500, commands=done),  # fine, but the hub took too long: 3600 ms
    ):
        now = 3600 if refused.ts == 2500 else 3000
        out = apply_activity_result(s, result(refused), now)
        assert [e.type for e in out.events] == alone and out.state is not None
        assert out.state.wft == 6 and out.events[0].ts == now  # scheduled as usual
    busy = s.model_copy(update={"wft": 5, "next_event_id": 6})  # a workflow task is open
    out = apply_activity_result(busy, result(RunAhead(wft=7, ts=3000), rid="b"), 3000)
    assert [e.type for e in out.events] == [EventType.ACTIVITY_COMPLETED]
