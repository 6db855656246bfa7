"""The commands a newcomer types, run as processes."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from immortal import Client, WorkflowFailedError
from immortal._codec import unpack
from immortal_worker.cli import load_targets
from tests.helpers import running_worker, wait_for_history
from tests.workflows import three_step

ROOT = Path(__file__).resolve().parent.parent


async def test_immortal_dev_runs_the_example_and_stops_cleanly(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "immortal_hub", "dev", "--port", "0", "--store", str(tmp_path / "dev"),
        cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(40):
            while not any("Ctrl-C stops everything" in line for line in lines):
                line = (await proc.stdout.readline()).decode()
                assert line, "immortal dev exited early:\n" + "".join(lines)
                lines.append(line)
        out = "".join(lines)
        assert '"tracking":"TRACK-FIRST-ORDER"' in out
        url = next(w for w in out.split() if w.startswith("nats://"))
        started = subprocess.run(
            [sys.executable, "-m", "immortal_hub", "workflow", "start", "place_order",
             '{"id": "o2", "items": ["pen"], "cents": 150}', "--id", "o2", "--wait", "-s", url],
            capture_output=True, text=True, timeout=30, cwd=tmp_path,
        )  # fmt: skip
        assert started.returncode == 0, started.stderr
        assert json.loads(started.stdout.split("\n", 1)[1])["tracking"] == "TRACK-O2"
        history = subprocess.run(
            [sys.executable, "-m", "immortal_hub", "workflow", "history", "o2", "-s", url],
            capture_output=True, text=True, timeout=30, cwd=tmp_path,
        )  # fmt: skip
        last = history.stdout.splitlines()[-1]  # the timeline ends with the outcome
        assert "completed in" in last and '"tracking": "TRACK-O2"' in last
        assert "activity check_stock(" in history.stdout
    finally:
        proc.send_signal(signal.SIGINT)
        rest = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0
    assert "stopped" in rest[0].decode()


USER_MODULE = """
import immortal


@immortal.activity
async def hold(seat: str) -> str:
    return f"held {seat}"


@immortal.workflow
async def reserve_seats(ctx: immortal.WorkflowContext, seats: list[str]) -> list[str]:
    return [await ctx.activity(hold, s) for s in seats]
"""


async def _until(proc: asyncio.subprocess.Process, marker: str) -> str:
    assert proc.stdout is not None
    lines: list[str] = []
    async with asyncio.timeout(40):
        while not any(marker in line for line in lines):
            line = (await proc.stdout.readline()).decode()
            assert line, "exited early:\n" + "".join(lines)
            lines.append(line)
    return "".join(lines)


async def test_immortal_dev_serves_your_module_and_runs_once_per_store(tmp_path: Path) -> None:
    (tmp_path / "myapp").mkdir()
    (tmp_path / "myapp" / "__init__.py").write_text("")
    (tmp_path / "myapp" / "seats.py").write_text(USER_MODULE)
    dev = [sys.executable, "-m", "immortal_hub", "dev", "--port", "0", "--store", "data"]
    proc = await asyncio.create_subprocess_exec(
        *dev, "--worker", "myapp.seats", cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        out = await _until(proc, "Ctrl-C stops everything")
        assert "serving      workflows reserve_seats" in out
        assert "example run" not in out  # your code instead of the bundled example
        url = next(w for w in out.split() if w.startswith("nats://"))
        started = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "immortal_hub", "workflow", "start", "reserve_seats",
             '["1A", "1B"]', "--wait", "-s", url],
            capture_output=True, text=True, timeout=30, cwd=tmp_path,
        )  # fmt: skip
        assert started.returncode == 0, started.stderr
        assert json.loads(started.stdout.split("\n", 1)[1]) == ["held 1A", "held 1B"]

        second = await asyncio.to_thread(
            subprocess.run, dev, capture_output=True, text=True, timeout=30, cwd=tmp_path
        )
        assert second.returncode == 1
        assert second.stdout.strip() == f"immortal dev is already running at {url}, data in ./data"
        # ... and the first one still serves, its store untouched by a second nats-server.
        again = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "immortal_hub", "workflow", "start", "reserve_seats",
             '["2C"]', "--wait", "-s", url],
            capture_output=True, text=True, timeout=30, cwd=tmp_path,
        )  # fmt: skip
        assert again.returncode == 0, again.stderr
    finally:
        proc.send_signal(signal.SIGINT)
        rest = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, rest[0].decode()


def test_worker_targets_resolve_modules_lists_and_functions() -> None:
    wfs, acts = load_targets(["immortal.examples.orders"])
    assert {w.__name__ for w in wfs} == {"place_order"}
    assert {a.__name__ for a in acts} == {"check_stock", "check_fraud", "charge", "ship"}
    wfs2, acts2 = load_targets(
        ["immortal.examples.orders:workflows", "immortal.examples.orders:charge"]
    )
    assert [w.__name__ for w in wfs2] == ["place_order"] and [a.__name__ for a in acts2] == [
        "charge"
    ]


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("no_such_module_xyz", "cannot import"),
        ("immortal.examples.orders:nope", "has no attribute 'nope'"),
        ("immortal.examples.orders:Order", "holds no @workflow or @activity"),
    ],
)
def test_worker_targets_report_bad_references(ref: str, message: str) -> None:
    with pytest.raises(typer.BadParameter, match=message):
        load_targets([ref])


async def test_workflow_failure_exit_code(nats_url: str, prefix: str, client: object) -> None:
    async with running_worker(nats_url, prefix):
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "immortal_hub", "workflow", "start", "three_step", '"not an int"',
             "--wait", "-s", nats_url, "--prefix", prefix],
            capture_output=True, text=True, timeout=30, cwd=ROOT,
        )  # fmt: skip
    assert done.returncode == 1
    assert "failed:" in done.stderr and "PayloadError" in done.stderr


def _cli(nats_url: str, prefix: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "immortal_hub", *args, "-s", nats_url, "--prefix", prefix],
        capture_output=True, text=True, timeout=30, cwd=ROOT,
    )  # fmt: skip


async def test_signal_status_cancel_and_schedules_from_the_cli(
    nats_url: str, prefix: str, client: Client
) -> None:
    from tests.test_toolbox import approvals, tick_counter

    async with running_worker(nats_url, prefix, workflows=[approvals, tick_counter]):
        handle = await client.start(approvals, 1, id="needs-ok")
        sent = await asyncio.to_thread(
            _cli, nats_url, prefix, "workflow", "signal", "needs-ok", "approve", '"fine"'
        )
        assert sent.returncode == 0, sent.stderr
        assert await handle.result(timeout=20) == ["fine"]
        status = await asyncio.to_thread(_cli, nats_url, prefix, "workflow", "status", "needs-ok")
        assert status.returncode == 0 and status.stdout.strip() == "null"
        waiting = await client.start(approvals, 1, id="to-cancel")
        cancelled = await asyncio.to_thread(
            _cli, nats_url, prefix, "workflow", "cancel", "to-cancel", "--reason", "testing"
        )
        assert cancelled.returncode == 0, cancelled.stderr
        with pytest.raises(WorkflowFailedError, match="testing"):
            await waiting.result(timeout=20)
        made = await asyncio.to_thread(
            _cli,
            nats_url,
            prefix,
            "schedule",
            "create",
            "hourly",
            "tick_counter",
            "--cron",
            "0 * * * *",
        )
        assert made.returncode == 0, made.stderr
        listed = await asyncio.to_thread(_cli, nats_url, prefix, "schedule", "list")
        assert (
            "hourly" in listed.stdout
            and "0 0 * * * *" in listed.stdout
            and "active" in listed.stdout
        )
        paused = await asyncio.to_thread(_cli, nats_url, prefix, "schedule", "pause", "hourly")
        assert paused.returncode == 0
        listed = await asyncio.to_thread(_cli, nats_url, prefix, "schedule", "list")
        assert "paused" in listed.stdout
        bad = await asyncio.to_thread(
            _cli, nats_url, prefix, "schedule", "create", "x", "tick_counter", "--cron", "* *"
        )
        assert bad.returncode != 0 and "5 or 6 fields" in bad.stderr


async def test_arguments_from_files_and_standard_input(
    nats_url: str, prefix: str, client: Client, tmp_path: Path
) -> None:
    from tests.test_toolbox import approvals

    conn = ["-s", nats_url, "--prefix", prefix]
    (tmp_path / "two.json").write_text("2\n")
    (tmp_path / "note.json").write_text(json.dumps('it\'s "fine"\nsigned: ops'))
    (tmp_path / "three.json").write_text("3")

    def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "immortal_hub", *args, *conn],
            input=stdin, capture_output=True, text=True, timeout=30, cwd=tmp_path,
        )  # fmt: skip

    async with running_worker(nats_url, prefix, workflows=[approvals, three_step]):
        started = await asyncio.to_thread(
            cli, "workflow", "start", "approvals", "-i", "two.json", "--id", "two-ok"
        )
        assert started.returncode == 0, started.stderr
        for signal_args, stdin in (
            (["-i", "note.json"], ""),
            (["--input-file", "-"], '"from stdin"'),
        ):
            sent = await asyncio.to_thread(
                cli, "workflow", "signal", "two-ok", "approve", *signal_args, stdin=stdin
            )
            assert sent.returncode == 0, sent.stderr
        handle = await client.get_handle("two-ok")
        assert await handle.result(timeout=20) == ['it\'s "fine"\nsigned: ops', "from stdin"]

        made = await asyncio.to_thread(
            cli, "schedule", "create", "every-sec", "three_step", "-i", "three.json",
            "--every", "1",
        )  # fmt: skip
        assert made.returncode == 0, made.stderr
        async with asyncio.timeout(20):  # the first scheduled run got its argument
            async for _, workflow_id, _, e in client.events(follow=True):
                if workflow_id.startswith("every-sec@") and e.type.value == "WorkflowCompleted":
                    assert unpack(e.attrs["result"]) == 15
                    break
        await client.schedules.delete("every-sec")

    both = await asyncio.to_thread(cli, "workflow", "start", "three_step", "3", "-i", "three.json")
    assert both.returncode == 2 and "not both" in both.stderr
    (tmp_path / "bad.json").write_text("{not json")
    bad = await asyncio.to_thread(cli, "workflow", "start", "three_step", "-i", "bad.json")
    assert bad.returncode == 2 and "bad.json is not JSON" in bad.stderr
    # Near and over the payload limit: no argv limit, no quoting; too large is one line.
    (tmp_path / "huge.json").write_text(json.dumps("x" * 300_000))
    huge = await asyncio.to_thread(cli, "workflow", "start", "three_step", "-i", "huge.json")
    assert huge.returncode == 1
    [line] = huge.stderr.splitlines()
    assert line.startswith("error: arguments of 300,0") and "exceed" in line, line


async def test_output_says_what_happened_and_follows_end_with_the_run(
    nats_url: str, prefix: str, client: Client
) -> None:
    from tests.test_toolbox import approvals

    conn = ["-s", nats_url, "--prefix", prefix]
    empty = await asyncio.to_thread(_cli, nats_url, prefix, "schedule", "list")
    assert empty.stdout == "none: no schedules for tenant 'default'\n"
    kept = await asyncio.to_thread(_cli, nats_url, prefix, "retention", "--history", "7d")
    assert kept.stdout.splitlines() == ["history  7 d (604800 s)", "logs     the stream's limits"]

    async with running_worker(nats_url, prefix, workflows=[approvals]):
        handle = await client.start(approvals, 1, id="needs-one")
        followers = []
        for args in (["logs"], ["workflow", "history"]):
            follower = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "immortal_hub", *args, "needs-one", "--follow", *conn,
                cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            followers.append(follower)
        await asyncio.sleep(1)  # both are following
        sent = await asyncio.to_thread(
            _cli, nats_url, prefix, "workflow", "signal", "needs-one", "approve", '"ok"'
        )
        assert sent.stdout == f"signal 'approve' sent to needs-one (run {handle.run_id})\n"
        async with asyncio.timeout(20):  # neither needs a Ctrl-C once the run closed
            (logs_out, logs_err), (hist_out, hist_err) = [await p.communicate() for p in followers]
    assert [p.returncode for p in followers] == [0, 0], (logs_err, hist_err)
    assert logs_out.decode() == f"none: no log lines for run {handle.run_id} of 'needs-one'\n"
    lines = hist_out.decode().splitlines()
    assert lines[0].split()[:3] == ["seq", "workflow", "id"] and "WorkflowCompleted" in lines[-1]
    assert b"Traceback" not in logs_err + hist_err

    again = await asyncio.to_thread(_cli, nats_url, prefix, "workflow", "cancel", "needs-one")
    assert again.returncode == 1
    assert again.stderr == (
        f"error: cannot cancel run {handle.run_id} of 'needs-one': it is already completed\n"
    )
    # events --json encodes payloads as history --json does.
    streamed = await asyncio.to_thread(_cli, nats_url, prefix, "events", "--json")
    started = json.loads(streamed.stdout.splitlines()[0])["event"]
    exported = await asyncio.to_thread(
        _cli, nats_url, prefix, "workflow", "history", "needs-one", "--json"
    )
    assert started == json.loads(exported.stdout)["events"][0]
    assert set(started["attrs"]["input"]) == {"$bytes"}


async def test_a_read_command_loads_neither_the_hub_nor_the_worker(
    nats_url: str, prefix: str, client: Client
) -> None:
    handle = await client.start("three_step", 1, id="just-read")
    await wait_for_history(client, "just-read", handle.run_id, bool)
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-X", "importtime", "-m", "immortal_hub", "workflow", "describe",
         "just-read", "-s", nats_url, "--prefix", prefix],
        capture_output=True, text=True, timeout=30, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    loaded = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()}
    assert "immortal._client" in loaded  # what it needs
    assert not {"immortal_hub._hub", "immortal.testing", "immortal_worker"} & loaded
