"""Finding runs: the runs index, listed newest first with filters and pages, and every run
of one workflow id."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from datetime import UTC, datetime
from functools import partial
from itertools import pairwise

import pytest

import immortal
from immortal import Client, InvalidQueryError, RunInfo, WorkflowContext, WorkflowHandle
from immortal._jetstream import last_message
from tests.helpers import running_worker


@immortal.workflow
async def quick(ctx: WorkflowContext, n: int) -> int:
    return n


@immortal.workflow
async def breaks(ctx: WorkflowContext, n: int) -> int:
    raise immortal.ApplicationError(f"broken {n}", non_retryable=True)


@immortal.workflow
async def waiter(ctx: WorkflowContext, n: int) -> int:
    await ctx.wait_signal("go")
    return n


@immortal.workflow
async def generation(ctx: WorkflowContext, n: int, last: int) -> int:
    if n < last:
        ctx.continue_as_new(n + 1, last)
    return n


LISTED = [quick, breaks, waiter, generation]


async def _start_all(client: Client, starts: list[tuple[object, int, str]]) -> list[WorkflowHandle]:
    gate = asyncio.Semaphore(200)

    async def one(workflow: object, n: int, queue: str) -> WorkflowHandle:
        async with gate:
            return await client.start(workflow, n, queue=queue)

    return await asyncio.gather(*(one(*s) for s in starts))


async def _all_pages(client: Client, limit: int, **filters: object) -> list[RunInfo]:
    runs: list[RunInfo] = []
    token = None
    while True:
        page = await client.list_workflows(limit=limit, page_token=token, **filters)  # type: ignore[arg-type]
        assert len(page.runs) <= limit
        runs.extend(page.runs)
        if page.next_page_token is None:
            return runs
        token = page.next_page_token


async def _settled(client: Client, closed: int) -> None:
    """Until the index lists ``closed`` closed runs (each is listed just after its close)."""
    async with asyncio.timeout(30):
        while len(await _all_pages(client, 1000, status="closed")) < closed:
            await asyncio.sleep(0.2)


async def _listed_open(client: Client, running: int) -> None:
    """Until the index lists ``running`` open runs: a run is listed as open once it has
    run for a second (Hub(list_after=1.0)); one that closes sooner only when it closes."""
    async with asyncio.timeout(30):
        while len(await _all_pages(client, 1000, status="running")) < running:
            await asyncio.sleep(0.2)


async def test_list_filters_and_pages_over_thousands_of_runs(
    nats_url: str, prefix: str, client: Client
) -> None:
    async with (
        running_worker(nats_url, prefix, workflows=LISTED, queues=["default"]),
        running_worker(nats_url, prefix, workflows=LISTED, queues=["eu"]),
    ):
        done = await _start_all(
            client,
            [(quick, i, "default") for i in range(1500)]
            + [(quick, i, "eu") for i in range(500)]
            + [(breaks, i, "default") for i in range(300)],
        )
        waiting = await _start_all(
            client,
            [(waiter, i, "eu") for i in range(200)] + [(waiter, i, "default") for i in range(100)],
        )
        await asyncio.sleep(0.1)
        since = datetime.now(UTC)
        late = [await client.start(waiter, i, queue="eu") for i in range(5)]  # one after another
        for h in done[:2000]:
            await h.result(timeout=60)
        await _settled(client, 2300)
        await _listed_open(client, 305)

        # Open runs come first, newest started first, and only runs still open.
        running = await _all_pages(client, 70, status="running")
        assert [r.run_id for r in running[:5]] == [h.run_id for h in reversed(late)]
        assert {r.run_id for r in running} == {h.run_id for h in [*waiting, *late]}
        assert len(running) == 305 and all(r.status == "running" for r in running)

        everything = await _all_pages(client, 500)
        assert len(everything) == len({r.run_id for r in everything}) == 2605
        assert all(r.status == "running" for r in everything[:305])
        assert all(r.status != "running" for r in everything[305:])
        closed_at = [r.closed_at for r in everything[305:]]
        assert all(a is not None for a in closed_at)

        failed = await _all_pages(client, 128, status="failed")
        assert {r.run_id for r in failed} == {h.run_id for h in done[2000:]}
        assert all(r.workflow_type == "breaks" and r.queue == "default" for r in failed)

        eu_done = await _all_pages(client, 99, status="completed", queue="eu")
        assert {r.run_id for r in eu_done} == {h.run_id for h in done[1500:2000]}
        eu_waiting = await _all_pages(client, 50, type="waiter", queue="eu")
        assert {r.run_id for r in eu_waiting} == {h.run_id for h in [*waiting[:200], *late]}
        assert await _all_pages(client, 50, type="quick", status="failed") == []

        recent = await _all_pages(client, 2, started_after=since)
        assert [r.run_id for r in recent] == [h.run_id for h in reversed(late)]
        before = await _all_pages(client, 1000, status="running", started_before=since)
        assert {r.run_id for r in before} == {h.run_id for h in waiting}

        # The first page names what comes next; the last one says there is none.
        first = await client.list_workflows(status="running", limit=300)
        rest = await client.list_workflows(status="running", page_token=first.next_page_token)
        assert len(first.runs) == 300 and len(rest.runs) == 5 and rest.next_page_token is None

        # A run that closes leaves the open runs and joins the closed ones.
        await late[0].signal("go")
        await late[0].result(timeout=20)
        async with asyncio.timeout(10):
            while (await client.list_workflows(limit=1, status="closed")).runs[0].run_id != late[
                0
            ].run_id:
                await asyncio.sleep(0.05)
        assert late[0].run_id not in {
            r.run_id for r in await _all_pages(client, 1000, status="running")
        }
        # ...and its open record is gone from the index itself, not just hidden.
        subject = client.names.run_open_subject(
            client.tenant, "eu", "waiter", late[0].workflow_id, late[0].run_id
        )
        async with asyncio.timeout(10):
            while await last_message(client.nc, client.names.stream_runs, subject) is not None:
                await asyncio.sleep(0.2)  # the empty message that removed it expires in 1 s

        await waiting[0].cancel("not needed")
        async with asyncio.timeout(20):
            while not (cancelled := (await client.list_workflows(status="cancelled")).runs):
                await asyncio.sleep(0.05)
        assert [(r.run_id, r.status) for r in cancelled] == [(waiting[0].run_id, "cancelled")]
        assert (await client.list_workflows(status="canceled")).runs == cancelled
        await waiting[1].terminate("stuck")
        async with asyncio.timeout(20):
            while not (terminated := (await client.list_workflows(status="terminated")).runs):
                await asyncio.sleep(0.05)
        assert [(r.run_id, r.status) for r in terminated] == [(waiting[1].run_id, "terminated")]


async def test_list_says_what_it_cannot_understand(client: Client) -> None:
    with pytest.raises(InvalidQueryError, match="unknown status 'sleeping'"):
        await client.list_workflows(status="sleeping")
    with pytest.raises(InvalidQueryError, match="invalid page token"):
        await client.list_workflows(page_token="next-please")
    with pytest.raises(InvalidQueryError, match="invalid page token"):
        await client.list_workflows(status="running", page_token="closed:12")
    with pytest.raises(InvalidQueryError, match="limit"):
        await client.list_workflows(limit=0)
    assert (await client.list_workflows(status="terminated")).runs == []  # known, none yet


async def test_every_run_of_a_workflow_id(nats_url: str, prefix: str, client: Client) -> None:
    async with running_worker(nats_url, prefix, workflows=LISTED):
        first = await client.start(generation, 1, 4, id="renewing")
        first_run = first.run_id
        assert await first.result(timeout=30) == 4
        again = await client.start(quick, 7, id="renewing")  # the id reused once closed
        assert await again.result(timeout=20) == 7
    runs = await client.workflow_runs("renewing")
    assert runs[0].run_id == again.run_id  # newest started first
    chain = runs[1:]
    assert [r.status for r in chain] == ["completed"] + ["continued_as_new"] * 3
    assert chain[-1].run_id == first_run and chain[0].run_id == first.run_id
    for newer, older in pairwise(chain):
        assert older.continued_to == newer.run_id and newer.continued_from == older.run_id
    assert chain[-1].continued_from is None and runs[0].continued_from is None
    assert {r.workflow_type for r in runs} == {"generation", "quick"}
    assert await client.workflow_runs("never-started") == []
    # The listing has them all too, one record each.
    listed = await _all_pages(client, 3)
    assert sorted(r.run_id for r in listed) == sorted(r.run_id for r in runs)


def _cli(url: str, prefix: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "immortal_hub", "workflow", *args, "-s", url, "--prefix", prefix],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


async def test_list_and_runs_from_the_command_line(
    nats_url: str, prefix: str, client: Client
) -> None:
    async with running_worker(nats_url, prefix, workflows=LISTED):
        chain = await client.start(generation, 1, 3, id="gen")
        assert await chain.result(timeout=30) == 3
        broken = await client.start(breaks, 1, id="broken")
        open_run = await client.start(waiter, 1, id="waiting")
        with pytest.raises(immortal.WorkflowFailedError):
            await broken.result(timeout=20)
        await _settled(client, 4)
        await _listed_open(client, 1)

    cli = partial(asyncio.to_thread, _cli, nats_url, prefix)
    listed = await cli("list")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split()[:3] == ["WORKFLOW", "ID", "RUN"]
    assert [line.split()[0] for line in lines[1:]] == ["waiting", "broken", "gen", "gen", "gen"]
    assert "more:" not in listed.stderr

    running = await cli("list", "--status", "running", "--json")
    body = json.loads(running.stdout)
    assert [r["run_id"] for r in body["runs"]] == [open_run.run_id]
    assert body["runs"][0]["status"] == "running" and body["next_page_token"] is None

    first = await cli("list", "--limit", "2", "--since", "1h")
    assert len(first.stdout.splitlines()) == 3  # the header and two runs
    token = first.stderr.split("--page", 1)[1].split()[0]
    second = await cli("list", "--limit", "2", "--since", "1h", "--page", token, "--json")
    assert [r["workflow_id"] for r in json.loads(second.stdout)["runs"]] == ["gen", "gen"]

    failed = await cli("list", "--status", "failed", "--type", "breaks")
    assert [line.split()[0] for line in failed.stdout.splitlines()[1:]] == ["broken"]
    none = await cli("list", "--status", "cancelled")
    assert none.returncode == 0 and none.stdout.strip() == "none"

    runs = await cli("runs", "gen")
    assert runs.returncode == 0, runs.stderr
    rows = [line.split() for line in runs.stdout.splitlines()[1:]]
    assert [r[3] for r in rows] == ["completed", "continued_as_new", "continued_as_new"]
    assert rows[0][0] == chain.run_id and rows[0][-1] == rows[1][0]  # "from <older run>"
    chain_json = json.loads((await cli("runs", "gen", "--json")).stdout)
    assert chain_json[-1]["continued_to"] == chain_json[-2]["run_id"]

    for bad, says in (
        (("list", "--status", "sleeping"), "unknown status 'sleeping'"),
        (("list", "--since", "soon"), "not a duration"),
        (("runs", "nobody"), "no workflow 'nobody'"),
    ):
        done = await cli(*bad)
        assert done.returncode != 0 and says in done.stderr, done.stderr
