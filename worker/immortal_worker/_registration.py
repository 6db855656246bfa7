"""What a worker tells ``imm-workers`` about itself, and what it checks before serving:
that a hub has set the server up, and that no live worker on its queues registers one of
its names with other code (``immortal._fingerprints``)."""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import os
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nats.js.errors import BadRequestError
from nats.js.errors import NotFoundError as JsNotFound

from immortal._connect import display_urls
from immortal._definitions import ActivityDefinition, WorkflowDefinition
from immortal._fingerprints import conflicts, definition_key, fingerprint, signature
from immortal._jetstream import last_message, require_jetstream
from immortal._transient import is_transient
from immortal._wire import now_ms
from immortal.security.connection import relays_reads

if TYPE_CHECKING:
    from immortal_worker._worker import Worker

__all__ = ["immortal_version", "registration", "wait_for_streams", "warn_of_conflicts"]

log = logging.getLogger("immortal_worker._worker")  # where these lines were always logged


def immortal_version() -> str:
    try:
        return importlib.metadata.version("immortal")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def registration(worker: Worker) -> dict[str, Any]:
    """What ``imm-workers`` says about this worker (discovery and liveness)."""
    definitions: list[WorkflowDefinition | ActivityDefinition] = [
        *worker.workflows.values(),
        *worker.activities.values(),
    ]
    return {
        "worker": worker.worker_id,
        "instance": worker.instance,  # this process, for a restart under the same id
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "version": immortal_version(),
        "tenant": worker.tenant,
        "queues": worker.queues,
        "workflows": sorted(worker.workflows),
        "activities": sorted(worker.activities),
        "fingerprints": {definition_key(d): fingerprint(d) for d in definitions},
        "signatures": {definition_key(d): signature(d) for d in definitions},
        "slots": {"workflow": worker.workflow_slots, "activity": worker.activity_slots},
        "held": [m.reply for m in worker._held.values() if m.reply],
        "running": sorted(worker._running_attempts.values()),  # "<run>/<activity>/<attempt>"
        "sticky": worker.sticky,  # whether it consumes its own sticky subject
        "ts": now_ms(),
    }


async def wait_for_streams(worker: Worker) -> None:
    """Until a hub has created the task stream and the queues bucket (said once); a server
    without JetStream is an error at once."""
    await require_jetstream(worker.nc, display_urls(worker.servers))
    warned = False
    while True:
        try:
            await _streams_exist(worker)
            return
        except Exception as exc:
            if not isinstance(exc, (JsNotFound, BadRequestError)) and not is_transient(exc):
                raise
            if not warned:
                log.warning(
                    "waiting for a hub to create Immortal's streams at %s",
                    display_urls(worker.servers),
                )
                warned = True
            await asyncio.sleep(0.5)


async def _streams_exist(worker: Worker) -> None:
    if not relays_reads(worker.nc):
        await worker.js.stream_info(worker.names.stream_tasks)
        await worker.js.key_value(worker.names.bucket_queues)
        return
    # A tenant's connection may not ask for stream info: a direct get of one of its keys
    # is answered (found or not) when the bucket exists, by no responder when it does not.
    names = worker.names
    key = names.queue_key(worker.tenant, worker.queues[0] if worker.queues else "default")
    bucket = names.bucket_queues
    await last_message(worker.nc, f"KV_{bucket}", names.kv_subject(bucket, key))


async def warn_of_conflicts(worker: Worker) -> None:
    """Warn for each name a live worker on one of our queues serves with other code."""
    from immortal import Client

    ours = registration(worker)
    client = Client(worker.servers, tenant=worker.tenant, prefix=worker.names.prefix, nc=worker.nc)
    try:
        others = [w for w in await client.workers() if w.worker != worker.worker_id]
    except Exception as exc:  # advice only: never keep a worker from starting
        log.debug("could not look for conflicting workers: %r", exc)
        return
    me = _Me(worker.worker_id, worker.queues, ours["fingerprints"], ours["signatures"])
    for conflict in conflicts([me, *others]):
        if worker.worker_id in conflict.signatures:
            log.warning("%s: its tasks go to either", conflict)


@dataclass(frozen=True)
class _Me:
    worker: str
    queues: list[str]
    fingerprints: dict[str, str]
    signatures: dict[str, str]
