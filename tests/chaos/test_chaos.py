"""Workflows that don't die, proven: a mixed workload under one fault class at a time.

Each test runs ``--chaos-workflows`` (default 2,000) workflows of ``workload.mixed`` (an
activity that fails and retries, a durable sleep, a signal, a child workflow, another
activity) through 2 hubs and 3 workers while a fault injector breaks one kind of thing over
and over, then checks the outcome of every workflow, every history and integrity chain,
the external ledger and the queues (``checker.py``). The seed is printed; the same seed
gives the same workload and the same fault schedule::

    just chaos -k worker-sigkill --chaos-seed 1234
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import tempfile
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from immortal import EventType
from tests.chaos.checker import Report, check
from tests.chaos.driver import drive, make_specs
from tests.chaos.harness import INJECTORS, Deployment, inject
from tests.chaos.workload import connect_ledger

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(1800)]

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"
POISONED = 5  # poison workflows among the others, in the poison class
IN_FLIGHT = 150


@pytest.mark.parametrize("fault", list(INJECTORS))
async def test_every_workflow_completes_exactly_once(
    fault: str, chaos_seed: int, chaos_workflows: int
) -> None:
    await _run(fault, chaos_seed, chaos_workflows, secure=False)


@pytest.mark.parametrize("fault", ["worker-sigkill", "hub-sigkill"])
async def test_with_auth_on_every_workflow_completes_exactly_once(
    fault: str, chaos_seed: int, chaos_workflows: int
) -> None:
    """The same, on a server whose every connection goes through the auth service: hubs
    and workers reconnect with their tokens after each kill."""
    await _run(fault, chaos_seed, chaos_workflows, secure=True)


@pytest.mark.parametrize("fault", ["worker-sigkill", "hub-sigkill"])
async def test_with_every_input_signed_every_workflow_completes_exactly_once(
    fault: str, chaos_seed: int, chaos_workflows: int
) -> None:
    """With auth on and the tenant requiring signed inputs: workers and the client sign
    (under signing sessions once open), the hubs check every input and its nonce while
    hubs and workers are killed; a killed worker opens a new session when it comes back."""
    await _run(fault, chaos_seed, chaos_workflows, secure=True, signed=True)


async def _run(
    fault: str, seed: int, chaos_workflows: int, *, secure: bool, signed: bool = False
) -> None:
    # Not pytest's tmp_path, which keeps only the last few sessions: a failed run's store,
    # ledger and process logs stay here for a post-mortem; a passed run's are removed.
    label = f"{fault}-signed" if signed else f"{fault}-auth" if secure else fault
    tmp_path = Path(tempfile.gettempdir()) / "immortal-chaos" / f"{label}-{seed}"
    shutil.rmtree(tmp_path, ignore_errors=True)
    tmp_path.mkdir(parents=True)
    print(f"\n[chaos] {fault}: seed {seed}  (again: just chaos -k {fault} --chaos-seed {seed})")
    ledger = tmp_path / "ledger.db"
    connect_ledger(str(ledger)).close()
    dep = Deployment(
        tmp_path, ledger, cluster=fault == "cluster-node-kill", secure=secure, signed=signed
    )
    await dep.start()
    faults: Counter[str] = Counter()
    try:
        async with dep.client() as client:
            specs = make_specs(chaos_workflows, POISONED if fault == "poison" else 0, seed)
            stop = asyncio.Event()
            injector = asyncio.create_task(
                inject(fault, dep, random.Random(seed * 7919 + 1), faults, stop)
            )
            try:
                driven = await drive(
                    client, specs, in_flight=IN_FLIGHT, duplicate=fault == "duplicates"
                )
            finally:
                stop.set()
                await injector  # its last fault is undone (a node restarted, a process thawed)
            report = Report(label, seed, faults=dict(faults), restarts=dict(dep.restarts))
            async with await dep.checker_client() as reader:
                await check(reader, driven, str(ledger), report)
                if signed:  # proof the run was signed: sessions opened, keys in history
                    js = reader.nc.jetstream()
                    sessions = (await js.stream_info("KV_imm-sessions")).state.messages
                    nonces = (await js.stream_info("KV_imm-nonces")).state.messages
                    keyed = await _signed_runs(reader, driven, sample=100)
                    print(
                        f"[chaos] {label}: {sessions} signing sessions, {nonces} nonces in "
                        f"imm-nonces (attempt starts'), {keyed} of 100 runs name their keys"
                    )
                    assert sessions >= 1 and nonces >= 1 and keyed == 100
    finally:
        await dep.close()
    _publish(report)
    if not report.anomalies:
        shutil.rmtree(tmp_path, ignore_errors=True)
    else:
        print(f"[chaos] {fault}: the run's store, ledger and logs are kept in {tmp_path}")

    assert not report.anomalies, f"{len(report.anomalies)} anomalies: {report.anomalies[:20]}"
    if fault == "duplicates":
        assert report.duplicates_sent >= 2 * chaos_workflows
    elif fault == "poison":
        assert report.poison_failed == POISONED
        assert report.restarts.get("worker", 0) >= POISONED  # each crashed at least one worker
    else:
        assert sum(faults.values()) >= (5 if chaos_workflows >= 1000 else 1), faults
    assert report.completed + report.poison_failed == chaos_workflows


def _publish(report: Report) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"chaos-{report.fault}-{report.seed}.json"
    path.write_text(json.dumps(asdict(report), indent=2))
    faults = ", ".join(f"{n} {what}" for what, n in sorted(report.faults.items())) or "-"
    print(
        f"[chaos] {report.fault}: {report.workflows} workflows in {report.seconds}s, "
        f"{report.completed} completed as expected, {report.poison_failed} poison failed; "
        f"faults: {faults}; restarts: {report.restarts}; attempts {report.attempts}, "
        f"lost {report.lost_attempts}, effects re-executed under their key "
        f"{report.reexecuted_effects}; client retries {report.client_retries}, "
        f"duplicates sent {report.duplicates_sent}; leftover messages of finished work "
        f"{report.leftover_done}; anomalies {len(report.anomalies)} ({path})"
    )


async def _signed_runs(reader: Any, driven: Any, *, sample: int) -> int:
    """How many of ``sample`` runs name the key that signed their start and each workflow
    task's result (history records it from the verified signature)."""
    named = 0
    for wid in sorted(driven.outcomes)[:sample]:
        handle = await reader.get_handle(wid, driven.outcomes[wid].run_id)
        events = await handle.history()
        started = [e for e in events if e.type is EventType.WORKFLOW_STARTED]
        tasks = [e for e in events if e.type is EventType.WORKFLOW_TASK_COMPLETED]
        if (
            started
            and (started[0].attrs.get("by") or {}).get("key_id")
            and tasks
            and all(e.attrs.get("key_id") for e in tasks)
        ):
            named += 1
    return named
