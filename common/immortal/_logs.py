"""Workflow and activity logs: standard ``logging``, stored in ``IMM_LOGS``.

``ctx.log`` (workflow code) and ``immortal.activity.logger`` (activity code) are logger
adapters that attach the run's identity and the id of the history event the line belongs
to (for workflow code, the newest event the code had seen; for an activity, its
``ActivityScheduled`` event, with the attempt). The worker's :class:`LogShipper` publishes
those records to ``imm.log.<tenant>.<workflow>.<run>``: one stream, ordered by the
server, however many workers wrote to it, that ``immortal logs --follow`` (or
``nats sub``/any JetStream consumer) tails and ``--from-seq`` rewinds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import zlib
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from immortal._activity import current_activity
from immortal._codec import pack, to_wire, unpack
from immortal._names import Names

__all__ = ["ActivityLogger", "LogLine", "LogShipper", "WorkflowLogger", "decode_log"]


@dataclass(frozen=True)
class LogLine:
    """One log record as stored: ``seq`` is its place in the server's ordered stream."""

    seq: int
    ts: float
    level: str
    logger: str
    message: str
    workflow_id: str
    run_id: str
    event_id: int | None
    worker: str
    attempt: int | None = None  # set for activity lines
    activity: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    sealed: bytes | None = None  # message and fields, with a payload codec (immortal.codec)


def decode_log(seq: int, data: bytes) -> LogLine:
    raw = unpack(data)
    return LogLine(
        seq=seq,
        ts=float(raw["ts"]),
        level=str(raw["level"]),
        logger=str(raw["logger"]),
        message=str(raw["message"]),
        workflow_id=str(raw["workflow_id"]),
        run_id=str(raw["run_id"]),
        event_id=raw.get("event_id"),
        worker=str(raw.get("worker", "")),
        attempt=raw.get("attempt"),
        activity=raw.get("activity"),
        fields=dict(raw.get("fields") or {}),
        sealed=raw.get("sealed"),
    )


def _merge(ids: dict[str, Any], kwargs: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Keep the caller's ``extra`` as structured fields beside the run's identity."""
    fields = dict(kwargs.get("extra") or {})
    kwargs["extra"] = {"imm": {**ids, "fields": fields}, **fields}
    return kwargs


class WorkflowLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """``ctx.log``: quiet while the workflow replays, so each line is logged once.

    Workflow code is deterministic, so its n-th logging call is the same call on every
    execution of the run, replays included. Each line carries that ordinal (``line``, counted
    while replaying too), and is stored with a message id made of it: a line logged again by
    code that runs again live (a workflow task retried, a run-ahead the hub refused) is the
    same message, which the stream keeps once.
    """

    def __init__(
        self,
        logger: logging.Logger,
        ids: dict[str, Any],
        replaying: Callable[[], bool],
        event_id: Callable[[], int],
    ) -> None:
        super().__init__(logger, ids)
        self._replaying = replaying
        self._event_id = event_id
        self._calls = 0  # logging calls the code made, replayed ones included

    def isEnabledFor(self, level: int) -> bool:
        # Checked by every logging call; answering here keeps the caller's line in records.
        self._calls += 1
        return not self._replaying() and super().isEnabledFor(level)

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        assert self.extra is not None
        ids = {**self.extra, "event_id": self._event_id(), "line": self._calls}
        return msg, _merge(ids, kwargs)


class ActivityLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """``immortal.activity.logger``: tags each line with the running attempt."""

    def __init__(self) -> None:
        super().__init__(logging.getLogger("immortal.activity"), {})

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        info = current_activity.get()
        if info is None:  # outside an activity: an ordinary log line
            return msg, kwargs
        ids = {
            "tenant": info.tenant,
            "workflow_id": info.workflow_id,
            "run_id": info.run_id,
            "event_id": info.activity_id,
            "attempt": info.attempt,
            "activity": info.name,
            "worker": info.worker,
        }
        return msg, _merge(ids, kwargs)


class LogShipper(logging.Handler):
    """Publishes the log lines of one worker's runs to ``IMM_LOGS``.

    Thread-safe (sync activities log from their threads): records are handed to the
    worker's event loop and published in order by one task. Lines of other workers in the
    same process are left to them.
    """

    def __init__(
        self, js: Any, names: Names, tenant: str, worker_id: str, codec: Any = None
    ) -> None:
        super().__init__(logging.DEBUG)
        self._js, self._names, self._tenant, self._worker = js, names, tenant, worker_id
        self._sealer = None if codec is None else _LineSealer(codec, tenant)
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[tuple[str, bytes, dict[str, str] | None] | None] = (
            asyncio.Queue()
        )
        self._task = self._loop.create_task(self._ship())
        self.shipped = 0

    def emit(self, record: logging.LogRecord) -> None:
        ids = getattr(record, "imm", None)
        if not isinstance(ids, dict) or ids.get("worker") != self._worker:
            return
        body: dict[str, Any] = {
            "ts": record.created,
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **{k: v for k, v in ids.items() if k not in ("fields", "tenant")},
        }
        if record.exc_info and record.exc_info[1] is not None:
            body["message"] += "\n" + logging.Formatter().formatException(record.exc_info)
        subject = self._names.log_subject(self._tenant, str(ids["workflow_id"]), str(ids["run_id"]))
        headers = None
        if "line" in ids:  # a workflow line: the same line logged again is stored once
            digest = f"{zlib.crc32(body['message'].encode()):08x}"
            if self._sealer is not None:  # a plain CRC would betray short messages
                digest = self._sealer.codec.digest(body["message"].encode())
            headers = {"Nats-Msg-Id": f"log:{ids['run_id']}:{ids['line']}:{digest}"}
        try:
            body["fields"] = to_wire(ids.get("fields") or {})
        except Exception:  # an unencodable field: keep the line, name the fields
            body["fields"] = {"unencodable": repr(ids.get("fields"))}
        if self._sealer is not None:
            body = self._sealer.seal(body)
        item = (subject, pack(body), headers)
        self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    async def _ship(self) -> None:
        while (item := await self._queue.get()) is not None:
            subject, data, headers = item
            try:
                await self._js.publish(subject, data, headers=headers)
                self.shipped += 1
            except Exception as exc:  # never let logging take the worker down
                logging.getLogger(__name__).debug("log line not stored: %s", exc)

    async def aclose(self, timeout: float = 5.0) -> None:
        self._queue.put_nowait(None)
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            async with asyncio.timeout(timeout):
                await self._task
        self._task.cancel()


class _LineSealer:
    """Seals a log line's message and fields (bound to its run, field ``log``)."""

    def __init__(self, codec: Any, tenant: str) -> None:
        from immortal.codec import Binding  # the codec package reads LogLine from here

        self.codec, self._tenant, self._binding = codec, tenant, Binding

    def seal(self, body: dict[str, Any]) -> dict[str, Any]:
        from immortal.codec._sealing import placeholder

        where = self._binding(self._tenant, str(body["workflow_id"]), str(body["run_id"]), "log")
        secret = pack({"message": body["message"], "fields": body.pop("fields")})
        sealed = self.codec.encode(secret, where)
        return {**body, "message": placeholder(sealed), "sealed": sealed}
