"""A run's history as a timeline, its lossless JSON export, and the replayer that checks
changed code against a recorded history (tests/fixtures/pack_and_ship.json).

Re-record the fixture (after a deliberate change to the history format) with
``IMMORTAL_RECORD_FIXTURES=1 uv run pytest tests/test_timeline.py``.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from immortal import (
    Client,
    EventType,
    HistoryEvent,
    UnknownWorkflowTypeError,
    format_timeline,
    history_from_json,
    history_to_json,
)
from immortal_worker.replay import replay, replay_file
from tests.helpers import assert_well_formed, running_worker
from tests.timeline_workflows import (
    label,
    pack,
    pack_and_ship,
    pack_and_ship_hasty,
    pack_and_ship_patched,
    pack_and_ship_relabelled,
)
from tests.workflows import three_step

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "pack_and_ship.json"


async def _cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *args, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def _nested_under(lines: list[str], head: str) -> list[str]:
    """The text of the lines indented under the first line that contains ``head``."""
    start = next(i for i, line in enumerate(lines) if head in line)
    col = lines[start].index(head)
    nested = []
    for line in lines[start + 1 :]:
        if line[col : col + 2] != "  ":
            break
        nested.append(line[col:].strip())
    return nested


async def test_timeline_nests_attempts_and_shows_the_sleep(
    nats_url: str, prefix: str, client: Client
) -> None:
    async with running_worker(
        nats_url, prefix, workflows=[pack_and_ship], activities=[pack, label]
    ):
        handle = await client.start(pack_and_ship, "o-1", id="pack-o-1")
        assert await handle.result(timeout=30) == "box for o-1, shipped"
    events = await handle.history()
    assert_well_formed(events)

    lines = format_timeline(events).splitlines()
    under_activity = _nested_under(lines, 'activity pack("o-1")')
    assert len(under_activity) == 5, lines
    assert under_activity[0].startswith("attempt 1  on ")
    assert under_activity[0].endswith("failed  StationBusy: the packing station is busy")
    assert under_activity[1].startswith("retry in 200 ms (attempt 2, due +")
    assert under_activity[2].startswith("attempt 2  dispatched after its backoff")
    assert under_activity[3].startswith("attempt 2  on ")
    assert under_activity[3].endswith('->  "box for o-1"')
    assert under_activity[4].startswith("completed after 2 attempts in ")
    under_sleep = _nested_under(lines, "sleep 300 ms  (due +")
    assert len(under_sleep) == 1, lines
    assert under_sleep[0].startswith("fired after ") and under_sleep[0].endswith(" late")
    assert "completed in" in lines[-1] and '"box for o-1, shipped"' in lines[-1]
    assert not any("WorkflowTask" in line for line in lines)  # bookkeeping stays out

    exported = history_to_json(events, workflow_id=handle.workflow_id, run_id=handle.run_id)
    assert history_from_json(exported) == events
    assert any(isinstance(e.attrs.get("input"), bytes) for e in history_from_json(exported))
    assert replay(events, pack_and_ship, workflow_id="pack-o-1", run_id=handle.run_id).ok

    # The same through the command line.
    where = ["-s", nats_url, "--prefix", prefix]
    code, out, err = await _cli("-m", "immortal_hub", "workflow", "history", "pack-o-1", *where)
    assert code == 0, err
    assert out.splitlines()[0] == f"workflow pack-o-1  run {handle.run_id}"
    assert out.splitlines()[1:] == lines
    code, out, err = await _cli(
        "-m", "immortal_hub", "workflow", "history", "pack-o-1", "--json", *where
    )
    assert code == 0, err
    assert history_from_json(out) == events

    if os.environ.get("IMMORTAL_RECORD_FIXTURES"):
        FIXTURE.write_text(out)


def _fixture_events() -> list[HistoryEvent]:
    return history_from_json(FIXTURE.read_text())


def test_the_fixture_is_a_retried_activity_and_a_sleep() -> None:
    types = [e.type for e in _fixture_events()]
    assert types.count(EventType.ACTIVITY_ATTEMPT_FAILED) == 1
    assert EventType.TIMER_FIRED in types and types[-1] is EventType.WORKFLOW_COMPLETED


def test_the_recorded_history_replays_against_unchanged_code() -> None:
    result = replay_file(FIXTURE, pack_and_ship)
    assert result.ok and result.divergence is None
    assert result.workflow_type == "pack_and_ship" and result.events == len(_fixture_events())
    # New behaviour behind ctx.patched() is a safe change: recorded runs take the old path.
    assert replay_file(FIXTURE, pack_and_ship_patched).ok


def test_a_different_activity_is_reported_at_the_event_that_recorded_the_first() -> None:
    scheduled = next(e for e in _fixture_events() if e.type is EventType.ACTIVITY_SCHEDULED)
    result = replay_file(FIXTURE, pack_and_ship_relabelled)
    assert not result.ok and result.divergence is not None
    d = result.divergence
    assert d.event_id == scheduled.id
    assert d.history == f"event {scheduled.id} ActivityScheduled 'pack'"
    assert d.code == "ScheduleActivity 'label' (seq 1)"
    assert f"history has event {scheduled.id} ActivityScheduled 'pack'" in d.message


def test_a_dropped_sleep_is_reported_at_the_timer_event() -> None:
    timer = next(e for e in _fixture_events() if e.type is EventType.TIMER_STARTED)
    result = replay_file(FIXTURE, pack_and_ship_hasty)
    assert result.divergence is not None
    assert result.divergence.event_id == timer.id
    assert result.divergence.history.startswith(f"event {timer.id} TimerStarted")
    assert result.divergence.code == "CompleteWorkflow"


def test_replay_picks_the_recorded_type_and_refuses_others() -> None:
    assert replay(_fixture_events(), [three_step, pack_and_ship]).ok
    with pytest.raises(UnknownWorkflowTypeError, match="pack_and_ship"):
        replay(_fixture_events(), [])


@pytest.mark.parametrize("program", ["immortal_worker", "immortal_hub"])
async def test_replay_command_exit_codes(program: str, tmp_path: Path) -> None:
    base = ["-m", program, "replay", str(FIXTURE), "--workflow"]
    code, out, err = await _cli(*base, "tests.timeline_workflows:pack_and_ship")
    assert code == 0, err
    assert out.strip() == f"{FIXTURE}: ok (pack_and_ship, {len(_fixture_events())} events)"

    scheduled = next(e for e in _fixture_events() if e.type is EventType.ACTIVITY_SCHEDULED)
    code, out, err = await _cli(*base, "tests.timeline_workflows:pack_and_ship_relabelled")
    assert code == 1, err
    assert f"DIVERGES at event {scheduled.id}" in out
    assert "ActivityScheduled 'pack'" in out and "ScheduleActivity 'label'" in out

    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    code, out, err = await _cli(
        "-m", program, "replay", str(broken), "--workflow", "tests.timeline_workflows:pack_and_ship"
    )
    assert code == 2 and "cannot replay: PayloadError" in err
    code, out, err = await _cli(*base, "tests.workflows:three_step")
    assert code == 2 and "UnknownWorkflowTypeError" in err and "'pack_and_ship'" in err


def _ev(
    id: int, type: EventType, caused_by: int | None = None, ts: int = 0, **attrs: Any
) -> HistoryEvent:
    return HistoryEvent(id=id, type=type, ts=1_000_000 + ts, caused_by=caused_by, attrs=attrs)


def test_timeline_covers_every_kind_of_step() -> None:
    from immortal._codec import encode_args, encode_value

    E = EventType
    boom = {"type": "NonDeterminismError", "message": "history has event 4 but the code issued X"}
    events = [
        _ev(1, E.WORKFLOW_STARTED, workflow_type="wf", queue="q", input=encode_args([1, "a"])),
        _ev(2, E.WORKFLOW_TASK_SCHEDULED, 1),
        _ev(3, E.WORKFLOW_TASK_FAILED, 2, ts=5, worker="w1", failure=boom),
        _ev(4, E.WORKFLOW_TASK_COMPLETED, 2, ts=10, through=1, worker="w2"),
        _ev(
            5,
            E.ACTIVITY_SCHEDULED,
            4,
            ts=10,
            seq=1,
            name="beat",
            queue="other",
            input=encode_args([]),
        ),
        _ev(6, E.TIMER_STARTED, 4, ts=10, seq=2, duration_ms=3_600_000, due=1_000_000 + 3_600_010),
        _ev(
            7,
            E.CHILD_WORKFLOW_SCHEDULED,
            4,
            ts=10,
            seq=3,
            workflow_type="kid",
            workflow_id="k1",
            run_id="r",
            queue="q",
            input=encode_args([2]),
        ),
        _ev(8, E.MARKER_RECORDED, 4, ts=10, patch="v2"),
        _ev(9, E.STATUS_SET, 4, ts=10, value=encode_value({"stage": "beating"})),
        _ev(10, E.ACTIVITY_HEARTBEAT, 5, ts=20, attempt=1, worker="w3", details=encode_value(10)),
        _ev(11, E.ACTIVITY_HEARTBEAT, 5, ts=30, attempt=1, worker="w3", details=encode_value(20)),
        _ev(
            12,
            E.ACTIVITY_ATTEMPT_FAILED,
            5,
            ts=40,
            attempt=1,
            failure={"type": "HeartbeatTimeout", "message": "attempt 1 sent no heartbeat for 1s"},
            next_attempt=2,
            backoff_ms=1000,
            retry_at=1_000_000 + 1040,
        ),
        _ev(
            13,
            E.WORKFLOW_SIGNALED,
            None,
            ts=50,
            name="go",
            input=encode_value("now"),
            signal_id="s",
        ),
        _ev(
            14,
            E.CHILD_WORKFLOW_FAILED,
            7,
            ts=60,
            status="failed",
            workflow_id="k1",
            run_id="r",
            failure={"type": "ValueError", "message": "bad kid"},
        ),
        _ev(15, E.WORKFLOW_CANCEL_REQUESTED, None, ts=70, reason="user asked"),
        _ev(16, E.TIMER_CANCELED, 4, ts=80, seq=2, timer=6),
        _ev(17, E.ACTIVITY_CANCELED, 4, ts=80, seq=1, activity=5),
        _ev(
            18,
            E.ACTIVITY_RESULT_IGNORED,
            5,
            ts=90,
            attempt=1,
            worker="w3",
            reason="activity already closed",
            started_ts=1_000_000,
            ended_ts=1_000_085,
        ),
        _ev(
            19,
            E.WORKFLOW_CONTINUED_AS_NEW,
            4,
            ts=100,
            new_run_id="next",
            input=encode_args([2, "b" * 200]),
        ),
    ]
    text = format_timeline(events)
    for expected in [
        '#1  started wf(1, "a")  on queue q',
        "#3  workflow task failed on w1  NonDeterminismError: history has event 4",
        "#5  activity beat()  on queue other",
        "#12    attempt 1  on w3  (2 heartbeats, last 20)  failed  HeartbeatTimeout: attempt 1 sent no",
        "retry in 1 s (attempt 2, due +1.040s)",
        "#17    cancelled by the workflow",
        "#18    attempt 1  on w3  ran 85 ms  result ignored: activity already closed",
        "#6  timer 1h 00m  (due +1h00m00s)",
        "#16    cancelled after 70 ms",
        "#7  child kid(2)  id k1",
        "#14    failed after 50 ms  ValueError: bad kid",
        "#8  patch 'v2' marked",
        '#9  status  {"stage": "beating"}',
        '#13  signal go  "now"',
        "#15  cancel requested: user asked",
        '#19  continued as new run next  (2, "bbbb',
    ]:
        assert expected in text, f"{expected!r} not in\n{text}"
    assert max(len(line) for line in text.splitlines()) < 160  # payloads are cut short
    assert [line.split()[1] for line in text.splitlines() if line.split()[0].startswith("+")] == [
        f"#{n}" for n in (1, 3, 5, 12, 17, 18, 6, 16, 7, 14, 8, 9, 13, 15, 19)
    ]


_scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text() | st.binary()
_values = st.recursive(
    _scalars | st.floats(allow_nan=False),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text() | st.sampled_from(["$bytes", "$map"]), inner, max_size=4)
        | st.dictionaries(st.integers(), inner, max_size=3)
    ),
    max_leaves=20,
)


@given(st.dictionaries(st.text(), _values, max_size=5))
def test_json_export_is_lossless(attrs: dict[str, Any]) -> None:
    events = [HistoryEvent(id=1, type=EventType.WORKFLOW_STARTED, ts=5, attrs=attrs)]
    assert history_from_json(history_to_json(events)) == events


def test_a_running_attempt_shows_its_heartbeats_where_it_was_cancelled() -> None:
    from immortal._codec import encode_args, encode_value

    E = EventType
    events = [
        _ev(1, E.WORKFLOW_STARTED, workflow_type="wf", queue="q", input=encode_args([])),
        _ev(2, E.ACTIVITY_SCHEDULED, 1, ts=1, seq=1, name="long", queue="q", input=encode_args([])),
        _ev(
            3, E.ACTIVITY_HEARTBEAT, 2, ts=20, attempt=1, worker="w3", details=encode_value("half")
        ),
        _ev(4, E.WORKFLOW_CANCEL_REQUESTED, None, ts=30),
        _ev(5, E.ACTIVITY_CANCELED, 1, ts=40, seq=1, activity=2),
    ]
    lines = format_timeline(events).splitlines()
    assert [line[18:] for line in lines] == [  # the text after time and event id
        f"started wf()  on queue q  at {lines[0].split(' at ')[1]}",
        "activity long()",
        '  attempt 1  on w3  running  (1 heartbeat, last "half")',
        "  cancelled by the workflow",
        "cancel requested",
    ]
    open_run = format_timeline(events[:3]).splitlines()
    assert open_run[-2].endswith('attempt 1  on w3  running  (1 heartbeat, last "half")')
    assert open_run[-1].strip() == "open"
