"""Small JetStream helpers shared by hub, worker and client.

nats-py has no batched direct get, so :func:`read_subject` speaks the server's direct-get
API itself: one request returns up to ``batch`` messages of one subject and ends with a
``204 EOB`` status (https://github.com/nats-io/nats-architecture-and-design, ADR-31).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

from nats.aio.client import Client as NATS
from nats.js.errors import APIError

__all__ = [
    "ERR_WRONG_LAST_SEQUENCE",
    "StoredMsg",
    "is_wrong_last_sequence",
    "last_message",
    "read_subject",
]

ERR_WRONG_LAST_SEQUENCE = 10071
_BATCH = 256


@dataclass(frozen=True, slots=True)
class StoredMsg:
    subject: str
    seq: int
    data: bytes
    headers: dict[str, str]


def is_wrong_last_sequence(exc: BaseException) -> bool:
    return isinstance(exc, APIError) and exc.err_code == ERR_WRONG_LAST_SEQUENCE


async def last_message(
    nc: NATS, stream: str, subject: str, *, timeout: float = 5.0
) -> StoredMsg | None:
    """The newest message on ``subject`` by direct get, or ``None``."""
    resp = await nc.request(f"$JS.API.DIRECT.GET.{stream}.{subject}", b"", timeout=timeout)
    return _lift(resp.headers or {}, resp.data)


async def read_subject(
    nc: NATS, stream: str, subject: str, *, from_seq: int = 1, timeout: float = 5.0
) -> AsyncIterator[StoredMsg]:
    """Every message on ``subject`` from stream sequence ``from_seq`` on, in order."""
    seq = max(from_seq, 1)
    while True:
        got = 0
        async for msg in _direct_batch(nc, stream, subject, seq, timeout):
            got += 1
            seq = msg.seq + 1
            yield msg
        if got < _BATCH:
            return


async def _direct_batch(
    nc: NATS, stream: str, subject: str, seq: int, timeout: float
) -> AsyncIterator[StoredMsg]:
    inbox = nc.new_inbox()
    queue: asyncio.Queue[tuple[dict[str, str], bytes]] = asyncio.Queue()

    async def collect(msg: object) -> None:
        queue.put_nowait((getattr(msg, "headers", None) or {}, getattr(msg, "data", b"")))

    sub = await nc.subscribe(inbox, cb=collect)
    try:
        req = {"seq": seq, "next_by_subj": subject, "batch": _BATCH}
        await nc.publish(f"$JS.API.DIRECT.GET.{stream}", json.dumps(req).encode(), reply=inbox)
        while True:
            headers, data = await asyncio.wait_for(queue.get(), timeout)
            msg = _lift(headers, data)
            if msg is None:
                return
            yield msg
    finally:
        await sub.unsubscribe()


def _lift(headers: dict[str, str], data: bytes) -> StoredMsg | None:
    status = headers.get("Status")
    if status in ("404", "204"):
        return None
    if status:
        raise APIError(code=int(status), description=headers.get("Description", ""))
    return StoredMsg(
        subject=headers["Nats-Subject"],
        seq=int(headers["Nats-Sequence"]),
        data=data,
        headers=headers,
    )
