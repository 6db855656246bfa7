"""The streams and buckets Immortal runs on, created idempotently when a hub starts."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.client import JetStreamContext
from nats.js.errors import BadRequestError, NotFoundError

from immortal._names import Names
from immortal._transient import retry_transient

__all__ = ["ResourceSettings", "ensure_resources", "stream_configs"]

log = logging.getLogger(__name__)

_DAY = 86_400.0


@dataclass(frozen=True)
class ResourceSettings:
    replicas: int = 1
    max_payload: int = 1024 * 1024  # bytes per message on the input and task streams
    duplicate_window: float = 120.0  # seconds; Nats-Msg-Id dedupe horizon
    log_max_age: float = 7 * _DAY
    audit_max_age: float = 90 * _DAY
    dlq_max_age: float = 30 * _DAY
    idem_max_age: float = 30 * _DAY
    worker_marker_ttl: float = 60.0  # how long an expired worker's marker stays
    principal_max_age: float = 30 * _DAY  # renewed whenever the principal connects
    nonce_max_age: float = 180.0  # >= a signature's accepted span (``_signatures``)
    session_max_age: float = 3660.0  # >= a signing session's life (``_sessions``)


def stream_configs(names: Names, s: ResourceSettings) -> list[StreamConfig]:
    p = names.prefix
    common: dict[str, Any] = {"storage": StorageType.FILE, "num_replicas": s.replicas}
    return [
        StreamConfig(
            name=names.stream_in,
            description="Immortal: every input to the hub, one subject space per tenant queue",
            subjects=[f"{p}.in.>"],
            retention=RetentionPolicy.WORK_QUEUE,
            allow_direct=True,  # a client finds a start queued here (a signal may wait for it)
            max_msg_size=s.max_payload,
            duplicate_window=s.duplicate_window,
            **common,
        ),
        StreamConfig(
            name=names.stream_history,
            description="Immortal: run histories, one message per transition",
            subjects=[f"{p}.hist.>"],
            retention=RetentionPolicy.LIMITS,
            allow_direct=True,
            duplicate_window=s.duplicate_window,
            **common,
        ),
        StreamConfig(
            name=names.stream_tasks,
            description="Immortal: workflow and activity tasks; the consumer ack-wait is the lease",
            subjects=[f"{p}.task.>"],
            retention=RetentionPolicy.WORK_QUEUE,
            allow_direct=True,  # to move a gone worker's sticky tasks
            max_msg_size=s.max_payload,
            duplicate_window=s.duplicate_window,
            **common,
        ),
        StreamConfig(
            name=names.stream_timers,
            description="Immortal: durable timers as scheduled messages, and their firings",
            subjects=[f"{p}.timer.>", f"{p}.fired.>", f"{p}.sched.>"],
            retention=RetentionPolicy.LIMITS,
            allow_msg_schedules=True,
            allow_rollup_hdrs=True,
            discard=DiscardPolicy.OLD,
            duplicate_window=s.duplicate_window,  # an attempt's timers are armed once in it
            **common,
        ),
        StreamConfig(
            name=names.stream_runs,
            description="Immortal: the runs index, a record per open run and per closed run",
            subjects=[f"{p}.runs.>"],
            retention=RetentionPolicy.LIMITS,
            allow_direct=True,
            allow_rollup_hdrs=True,  # a closing run's open record is rolled up...
            allow_msg_ttl=True,  # ...by an empty message that expires
            duplicate_window=s.duplicate_window,
            **common,
        ),
        StreamConfig(
            name=names.stream_logs,
            description="Immortal: log records of workflow and activity code",
            subjects=[f"{p}.log.>"],
            retention=RetentionPolicy.LIMITS,
            max_age=s.log_max_age,
            allow_direct=True,
            **common,
        ),
        StreamConfig(
            name=names.stream_audit,
            description="Immortal: refusals and policy decisions",
            subjects=[f"{p}.audit.>"],
            retention=RetentionPolicy.LIMITS,
            max_age=s.audit_max_age,
            allow_direct=True,
            **common,
        ),
        StreamConfig(
            name=names.stream_dlq,
            description="Immortal: inputs that could not be processed, with the reason",
            subjects=[f"{p}.dlq.>"],
            retention=RetentionPolicy.LIMITS,
            max_age=s.dlq_max_age,
            allow_direct=True,
            **common,
        ),
    ]


def bucket_configs(names: Names, s: ResourceSettings) -> list[KeyValueConfig]:
    # Direct gets on every bucket: the one read the broker can scope to a tenant's keys
    # (``$JS.API.DIRECT.GET.KV_<bucket>.$KV.<bucket>.<tenant>.>``) when auth is on.
    common: dict[str, Any] = {
        "storage": StorageType.FILE,
        "replicas": s.replicas,
        "history": 1,
        "direct": True,
    }
    return [
        # Keys carry their own short TTL; an expired key leaves a marker that watchers see.
        KeyValueConfig(
            bucket=names.bucket_workers,
            description="live workers",
            limit_marker_ttl=s.worker_marker_ttl,
            **common,
        ),
        KeyValueConfig(
            bucket=names.bucket_idem, description="idempotency keys", ttl=s.idem_max_age, **common
        ),
        KeyValueConfig(bucket=names.bucket_policy, description="policy documents", **common),
        KeyValueConfig(bucket=names.bucket_queues, description="tenant queue registry", **common),
        # One key per live hub, renewed every second: what it may still have pushed.
        KeyValueConfig(bucket=names.bucket_hubs, description="live hubs", **common),
        KeyValueConfig(bucket=names.bucket_schedules, description="workflow schedules", **common),
        # Signed inputs' nonces, one create each, expiring with the signature window. In
        # memory: a replay after every server restarted at once is the price (see docs).
        KeyValueConfig(
            bucket=names.bucket_nonces,
            description="signed inputs' nonces",
            ttl=s.nonce_max_age,
            **{**common, "storage": StorageType.MEMORY, "history": 1},
        ),
        # Signing sessions' keys: what lets any hub check a MAC (``_sessions``).
        KeyValueConfig(
            bucket=names.bucket_sessions,
            description="signing sessions",
            ttl=s.session_max_age,
            **{**common, "history": 1},
        ),
        # Kept by the auth service: who each principal id is (never a token).
        KeyValueConfig(
            bucket=names.bucket_principals,
            description="principals by id",
            ttl=s.principal_max_age,
            **common,
        ),
    ]


async def ensure_resources(
    js: JetStreamContext, names: Names, settings: ResourceSettings | None = None
) -> None:
    """Create every stream and bucket; leave existing ones as they are. Repeated through
    leader elections (each step is idempotent)."""
    s = settings or ResourceSettings()
    await retry_transient(lambda: _ensure(js, names, s), what="streams and buckets")


async def _ensure(js: JetStreamContext, names: Names, s: ResourceSettings) -> None:
    for cfg in stream_configs(names, s):
        assert cfg.name is not None
        try:
            info = await js.stream_info(cfg.name)
            _warn_if_replicas_differ(cfg.name, info.config.num_replicas, s.replicas)
            missing = set(cfg.subjects or []) - set(info.config.subjects or [])
            direct = bool(cfg.allow_direct and not info.config.allow_direct)
            if missing or direct:  # a stream from an older version: add what it lacks
                info.config.subjects = sorted({*(info.config.subjects or []), *missing})
                info.config.allow_direct = info.config.allow_direct or cfg.allow_direct
                await js.update_stream(info.config)
                log.info("stream %s updated: subjects %s, direct %s", cfg.name, missing, direct)
        except NotFoundError:
            try:
                await js.add_stream(cfg)
                log.info("created stream %s", cfg.name)
            except BadRequestError as exc:  # another hub created it first
                log.debug("stream %s: %s", cfg.name, exc)
    for kv in bucket_configs(names, s):
        try:
            await js.key_value(kv.bucket)
            info = await js.stream_info(f"KV_{kv.bucket}")
            _warn_if_replicas_differ(f"KV_{kv.bucket}", info.config.num_replicas, s.replicas)
            if not info.config.allow_direct:  # a bucket from an older version
                info.config.allow_direct = True
                await js.update_stream(info.config)
                log.info("bucket %s updated: direct gets", kv.bucket)
        except (NotFoundError, BadRequestError):
            await js.create_key_value(kv)
            log.info("created bucket %s", kv.bucket)


def _warn_if_replicas_differ(stream: str, existing: int | None, wanted: int) -> None:
    """Replicas are set when a stream is created; one made earlier keeps its own. Changing
    them is an operator's decision (``nats stream edit --replicas``), not every hub's."""
    if (existing or 1) != wanted:
        log.warning(
            "stream %s has %d replica(s), not the %d asked for: it was created so; change it "
            "with `nats stream edit %s --replicas %d` if that is what you want",
            stream, existing or 1, wanted, stream, wanted,
        )  # fmt: skip
