"""The chaos workload's client side: start every workflow, signal the ones that wait for a
signal, and collect each outcome, retrying through faults the way a careful caller would
(with the workflow's idempotency key and the signal's id, so a retry is never a second
request). ``duplicates`` makes the client send every start and signal twice more: once by
request-reply and once straight into ``IMM_IN`` under a different message id, so JetStream's
own dedupe cannot hide it and the hub's must catch it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from immortal import Client, WorkflowFailedError
from immortal._codec import encode_args, encode_value
from immortal._definitions import workflow_definition
from immortal._inputs import send_input
from immortal._wire import SignalWorkflow, StartWorkflow, encode
from immortal.security import sender_of
from tests.chaos.workload import mixed, poisoned

log = logging.getLogger(__name__)
T = TypeVar("T")
GIVE_UP_S = 300.0  # a workflow not done by then is reported as stuck


@dataclass
class Outcome:
    spec: dict[str, Any]
    run_id: str = ""
    result: Any = None
    failure: BaseException | None = None
    error: str = ""  # the driver gave up on it (stuck, or an error it could not get past)
    retries: int = 0


@dataclass
class Drive:
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    client_retries: int = 0
    duplicates_sent: int = 0
    seconds: float = 0.0


def make_specs(n: int, poison: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    specs: list[dict[str, Any]] = []
    every = n // poison if poison else 0
    for i in range(n):
        if every and i % every == every // 2:
            specs.append({"id": f"poison-{seed}-{i}", "poison": True})
            continue
        specs.append(
            {
                "id": f"chaos-{seed}-{i}",
                "x": rng.randrange(1000),
                "fail": rng.choice((0, 0, 1, 2)),
                "sleep": rng.choice((0.0, 0.0, round(rng.uniform(0.05, 1.5), 3))),
                "signal": rng.random() < 0.4,
                "bump": rng.randrange(100),
                "signal_delay": round(rng.uniform(0.0, 0.5), 3),
                "child": rng.random() < 0.3,
            }
        )
    return specs


async def _retrying(out: Outcome, deadline: float, op: Callable[[], Awaitable[T]]) -> T:
    delay = 0.1
    while True:
        try:
            return await op()
        except WorkflowFailedError:
            raise
        except Exception as exc:
            if time.monotonic() > deadline:
                raise TimeoutError(f"gave up after {out.retries} retries: {exc!r}") from exc
            out.retries += 1
            log.debug("%s: retrying after %r", out.spec["id"], exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


async def _send_twice_more(client: Client, queue: str, kind: Any, data: bytes, msg_id: str) -> int:
    await send_input(client.nc, client.names, client.tenant, queue, kind, data, msg_id=msg_id)
    await client.nc.jetstream().publish(
        client.names.input_subject(client.tenant, queue, kind, sender_of(client.nc)),
        data,
        headers={"Nats-Msg-Id": f"{msg_id}:again"},
    )
    return 2


async def _one(client: Client, spec: dict[str, Any], drive: Drive, duplicate: bool) -> None:
    out = drive.outcomes[spec["id"]] = Outcome(spec)
    deadline = time.monotonic() + GIVE_UP_S
    wf = poisoned if spec.get("poison") else mixed
    arg = spec["id"] if spec.get("poison") else spec
    try:
        handle = await _retrying(
            out,
            deadline,
            lambda: client.start(wf, arg, id=spec["id"], idempotency_key=spec["id"]),
        )
        out.run_id = handle.run_id
        if duplicate:
            body = StartWorkflow(
                workflow_id=handle.workflow_id,
                run_id=handle.run_id,
                workflow_type=workflow_definition(wf).name,
                input=encode_args([arg]),
            )
            data, msg_id = encode(body), f"start:{handle.run_id}"
            sent = await _retrying(
                out, deadline, lambda: _send_twice_more(client, "default", "start", data, msg_id)
            )
            drive.duplicates_sent += sent  # not `+= await`: that would lose concurrent updates
        if spec.get("signal"):
            await asyncio.sleep(spec["signal_delay"])  # some arrive before the wait, some after
            await _retrying(
                out, deadline, lambda: handle.signal("bump", spec["bump"], id=spec["id"])
            )
            if duplicate:
                sig = SignalWorkflow(
                    workflow_id=handle.workflow_id,
                    run_id=handle.run_id,
                    name="bump",
                    input=encode_value(spec["bump"]),
                    signal_id=f"signal:{spec['id']}",
                )
                data, msg_id = encode(sig), sig.signal_id
                sent = await _retrying(
                    out,
                    deadline,
                    lambda: _send_twice_more(client, "default", "signal", data, msg_id),
                )
                drive.duplicates_sent += sent
        try:
            out.result = await _retrying(
                out, deadline, lambda: handle.result(timeout=max(1.0, deadline - time.monotonic()))
            )
        except WorkflowFailedError as exc:
            out.failure = exc
    except Exception as exc:
        out.error = repr(exc)
    drive.client_retries += out.retries


async def drive(
    client: Client, specs: list[dict[str, Any]], *, in_flight: int, duplicate: bool
) -> Drive:
    result = Drive()
    gate = asyncio.Semaphore(in_flight)
    began = time.monotonic()

    async def bounded(spec: dict[str, Any]) -> None:
        async with gate:
            await _one(client, spec, result, duplicate)

    await asyncio.gather(*(bounded(s) for s in specs))
    result.seconds = time.monotonic() - began
    return result
