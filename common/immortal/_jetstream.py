"""Small JetStream helpers shared by hub, worker and client.

nats-py has no batched direct get, so :func:`read_subject` speaks the server's direct-get
API itself: one request returns up to ``batch`` messages of one subject and ends with a
``204 EOB`` status (https://github.com/nats-io/nats-architecture-and-design, ADR-31).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import ConsumerConfig, ConsumerInfo, DeliverPolicy
from nats.js.errors import APIError, NotFoundError, ServiceUnavailableError

from immortal._names import encode_token
from immortal._requests import Requests
from immortal.security.connection import (
    direct_known,
    direct_withheld,
    read_relay,
    withhold_direct,
)
from immortal.security.errors import PermissionDeniedError
from immortal.security.violations import violation_for

__all__ = [
    "ERR_WRONG_LAST_SEQUENCE",
    "Puller",
    "StoredMsg",
    "TooManySubjects",
    "create_consumer",
    "is_wrong_last_sequence",
    "kv_scan",
    "last_message",
    "last_per_subject",
    "live_subscribe",
    "read_newest",
    "read_since",
    "read_subject",
    "require_jetstream",
    "tail",
]

ERR_WRONG_LAST_SEQUENCE = 10071
ERR_NO_MESSAGE = 10037
ERR_CONSUMER_EXISTS = 10148  # a consumer of that name exists, with another configuration
_BATCH = 256
_MULTI_MAX = 1024  # the server's cap on subjects in one multi-subject direct get
_MAX_WINDOW = 1 << 22  # sequences one backward step may span
_NO_LEADER_PAUSE = 0.5  # seconds before a pull request that met no consumer leader is retried


@dataclass(frozen=True, slots=True)
class StoredMsg:
    subject: str
    seq: int
    data: bytes
    headers: dict[str, str]


async def require_jetstream(nc: NATS, where: str) -> bool:
    """Raise :class:`NotSetUpError` if the server runs without JetStream; return whether its
    INFO said it runs it. A server without it in its INFO (a leaf node may still reach a
    JetStream domain) gets one account-info request, with no retries: a plain server
    without JetStream answers it at once with 503, where retrying would take 20 s."""
    from immortal._errors import NotSetUpError

    if nc._server_info.get("jetstream"):  # the INFO the server sent on connect
        return True
    try:
        await nc.jetstream().account_info()
    except (ServiceUnavailableError, NoRespondersError) as exc:
        raise NotSetUpError(
            f"the NATS server at {where} runs without JetStream: start it with -js, or "
            "`jetstream {}` in its config (see nats.conf)"
        ) from exc
    return False


def is_wrong_last_sequence(exc: BaseException) -> bool:
    return isinstance(exc, APIError) and exc.err_code == ERR_WRONG_LAST_SEQUENCE


async def last_message(
    nc: NATS,
    stream: str,
    subject: str,
    *,
    timeout: float = 5.0,
    leader: bool = False,
    relay: bool = True,
) -> StoredMsg | None:
    """The newest message on ``subject`` by direct get, or ``None``.

    Any replica answers a direct get, and a follower may not have applied the newest
    writes yet. ``leader=True`` asks the stream's leader instead (the message-get API), for
    decisions that must see everything stored so far. A direct get the broker refuses a
    tenant's connection (its policy lets it read only some runs) is asked of the hubs'
    read relay, which decides the run, unless ``relay=False``.
    """
    if leader:
        return await _leader_last(nc, stream, subject, timeout)
    relayed = relay and read_relay(nc, subject) is not None
    if relayed and direct_withheld(nc, stream):
        return await _last_by_relay(nc, stream, subject, timeout)
    # Timer-free, and refused at once when the broker does not permit it.
    try:
        resp = await Requests.of(nc).request(
            f"$JS.API.DIRECT.GET.{stream}.{subject}", b"", timeout=timeout
        )
    except PermissionDeniedError:
        if not relayed:
            raise
        # The tenant's policy lets this principal read only some runs: the relay decides
        # each (``permissions.DECIDED_READS``).
        withhold_direct(nc, stream)
        return await _last_by_relay(nc, stream, subject, timeout)
    if relay:
        withhold_direct(nc, stream, False)
    return _lift(resp.headers or {}, resp.data)


async def _last_by_relay(nc: NATS, stream: str, subject: str, timeout: float) -> StoredMsg | None:
    """The newest message on ``subject`` by a batched read, which the relay forwards."""
    newest = None
    async for msg in _direct(nc, stream, {"multi_last": [subject], "batch": _MULTI_MAX}, timeout):
        if newest is None or msg.seq > newest.seq:
            newest = msg
    return newest


async def live_subscribe(
    nc: NATS, stream: str, subject: str, cb: Callable[[Msg], Awaitable[None]]
) -> Any:
    """A core subscription to ``subject``'s notifications (``<p>.hist.<t>...`` or
    ``<p>.log.<t>...``, stored in ``stream``), or None when the broker would refuse it:
    a tenant's policy left this principal's reads of the stream to the relay, and the
    caller then reads rather than waits to be told. The broker grants the live subjects
    and the stream's direct gets together, so a direct get of a made-up run says which
    (an answer either way, where a refused subscription is only an error report)."""
    if read_relay(nc, subject) is not None and not await _direct_permitted(nc, stream, subject):
        return None
    return await nc.subscribe(subject, cb=cb)


async def _direct_permitted(nc: NATS, stream: str, subject: str) -> bool:
    known = direct_known(nc, stream)
    if known is not None:
        return known
    probe = ".".join([*subject.split(".")[:3], encode_token("="), encode_token("=")])
    try:
        await last_message(nc, stream, probe, relay=False)
    except PermissionDeniedError:
        withhold_direct(nc, stream)
        return False
    withhold_direct(nc, stream, False)
    return True


async def _leader_last(nc: NATS, stream: str, subject: str, timeout: float) -> StoredMsg | None:
    try:
        raw = await nc.jetstream(timeout=timeout).get_msg(stream, subject=subject)
    except NotFoundError as exc:
        if exc.err_code == ERR_NO_MESSAGE:
            return None
        raise
    assert raw.subject is not None and raw.seq is not None
    return StoredMsg(
        subject=raw.subject, seq=raw.seq, data=raw.data or b"", headers=raw.headers or {}
    )


async def create_consumer(
    nc: NATS, stream: str, config: ConsumerConfig, *, timeout: float = 5.0
) -> ConsumerInfo:
    """Create the durable consumer ``config`` names, or return the existing one unchanged.

    nats-py's ``add_consumer`` updates a consumer that exists with another configuration,
    so whoever called it last would set, say, the ack-wait (the lease) of every worker of
    a queue. The create action leaves an existing consumer as it is; the caller compares.
    The API subject names the filter, which subject permissions can scope.
    """
    name = config.durable_name or config.name
    assert name and config.filter_subject, "a named consumer with one filter subject"
    config.name = name
    subject = f"$JS.API.CONSUMER.CREATE.{stream}.{name}.{config.filter_subject}"
    request = {"stream_name": stream, "config": config.as_dict(), "action": "create"}
    try:
        resp = await nc.request(subject, json.dumps(request).encode(), timeout=timeout)
    except (TimeoutError, NatsTimeout):
        from immortal.security.violations import violation_for

        refused = violation_for(nc, subject)  # the broker refused it: say so, typed
        if refused is not None:
            raise refused from None
        raise
    body = json.loads(resp.data)
    error = body.get("error")
    if error is None:
        created: ConsumerInfo = ConsumerInfo.from_response(body)
        return created
    if error.get("err_code") == ERR_CONSUMER_EXISTS:
        existing: ConsumerInfo = await nc.jetstream(timeout=timeout).consumer_info(stream, name)
        return existing
    raise APIError.from_error(error)  # raises the typed error


async def read_subject(
    nc: NATS, stream: str, subject: str, *, from_seq: int = 1, timeout: float = 5.0
) -> AsyncGenerator[StoredMsg, None]:
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


async def read_since(
    nc: NATS, stream: str, subject: str, since: datetime, *, timeout: float = 5.0
) -> AsyncGenerator[StoredMsg, None]:
    """Every message on ``subject`` stored at or after ``since`` (the server's clock), in
    order."""
    req = {"start_time": since.astimezone(UTC).isoformat(), "next_by_subj": subject}
    last = None
    got = 0
    async for msg in _direct(nc, stream, {**req, "batch": _BATCH}, timeout):
        got, last = got + 1, msg.seq
        yield msg
    if got == _BATCH and last is not None:
        async for msg in read_subject(nc, stream, subject, from_seq=last + 1, timeout=timeout):
            yield msg


async def read_newest(
    nc: NATS, stream: str, subject: str, *, before: int | None = None, want: int = 64
) -> AsyncGenerator[StoredMsg, None]:
    """Messages on ``subject`` (wildcards allowed) with a sequence below ``before``, newest
    first, read lazily: stop iterating when you have enough.

    JetStream reads forward only. So this reads windows of sequences forward, from the
    newest match down: the first spans ``2 * want`` sequences below the newest match, and
    each next one is sized by how many matches the last held, widening fast where matches
    are sparse. A window's read is batched and asks for no more messages than it spans.
    """
    newest = await last_message(nc, stream, subject)
    if newest is None:
        return
    hi = newest.seq + 1 if before is None else min(before, newest.seq + 1)
    width = max(2 * want, 32)
    while hi > 1:
        lo = max(1, hi - width)
        window = [m async for m in _window(nc, stream, subject, lo, hi)]
        for msg in reversed(window):
            yield msg
        hi = lo
        if len(window) < want:  # sparse here: span what should hold ``want`` next time
            width = width * 8 if not window else width * -(-want // len(window))
            width = min(width, _MAX_WINDOW)


async def _window(
    nc: NATS, stream: str, subject: str, lo: int, hi: int
) -> AsyncGenerator[StoredMsg, None]:
    """The messages on ``subject`` with ``lo <= seq < hi``, in order."""
    seq = lo
    while seq < hi:
        batch = min(_BATCH, hi - seq)
        got = 0
        async with contextlib.aclosing(_direct_batch(nc, stream, subject, seq, 5.0, batch)) as msgs:
            async for msg in msgs:
                got += 1
                if msg.seq >= hi:
                    return  # the rest lies beyond the window (the server sent it anyway)
                seq = msg.seq + 1
                yield msg
        if got < batch:
            return


async def tail(
    nc: NATS, stream: str, subject: str, *, from_seq: int = 1, follow: bool = False
) -> AsyncGenerator[StoredMsg, None]:
    """Messages on ``subject`` (wildcards allowed) from ``from_seq`` on, in stream order;
    with ``follow``, then each new one as it is stored, until the caller stops."""
    seq = max(from_seq, 1)
    async for msg in read_subject(nc, stream, subject, from_seq=seq):
        seq = msg.seq + 1
        yield msg
    if not follow:
        return
    if read_relay(nc, subject) is not None:
        async for msg in _follow_by_reads(nc, stream, subject, seq):
            yield msg
        return
    # An ordered consumer from where the read stopped: gap-free, recreated by nats-py on
    # any sequence mismatch.
    sub = await nc.jetstream().subscribe(
        subject,
        stream=stream,
        ordered_consumer=True,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=seq),
    )
    try:
        while True:
            try:
                new = await sub.next_msg(timeout=5.0)
            except TimeoutError:
                continue
            yield StoredMsg(
                subject=new.subject,
                seq=new.metadata.sequence.stream,
                data=new.data,
                headers=new.headers or {},
            )
    finally:
        # Left while the connection drains or is closed, the subscription goes with it.
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


async def _follow_by_reads(
    nc: NATS, stream: str, subject: str, seq: int
) -> AsyncIterator[StoredMsg]:
    """Follow without a consumer (a tenant's connection may create none): a core
    subscription says something was stored, and a read from the next sequence fetches
    it, gap-free; a quiet second reads anyway (a core message can be lost)."""
    stored = asyncio.Event()

    async def notice(_: object) -> None:
        stored.set()

    sub = await live_subscribe(nc, stream, subject, notice)  # None: a read each second
    try:
        while True:
            stored.clear()
            async for msg in read_subject(nc, stream, subject, from_seq=seq):
                seq = msg.seq + 1
                yield msg
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await stored.wait()
    finally:
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()


async def kv_scan(nc: NATS, bucket: str, keys: str) -> list[tuple[str, bytes]]:
    """(key, value) of every live key of ``bucket`` matching ``keys`` (wildcards allowed),
    read from the bucket's stream in order: what a KV watch's initial values give, without
    a consumer (a tenant's connection may create none)."""
    prefix = f"$KV.{bucket}."
    out: dict[str, bytes] = {}
    async for msg in read_subject(nc, f"KV_{bucket}", prefix + keys):
        key = msg.subject[len(prefix) :]
        if msg.headers.get("KV-Operation") in ("DEL", "PURGE") or not msg.data:
            out.pop(key, None)
        else:
            out[key] = msg.data
    return list(out.items())


async def last_per_subject(
    nc: NATS, stream: str, subjects: str | list[str], *, timeout: float = 5.0
) -> list[StoredMsg]:
    """The newest message of every subject matching ``subjects`` (a filter or several), in
    stream order, by one batched direct get. The server answers for up to 1,024 subjects:
    past that it raises :class:`TooManySubjects`."""
    subject = subjects if isinstance(subjects, str) else ", ".join(subjects[:3])
    filters = [subjects] if isinstance(subjects, str) else subjects
    req = {"multi_last": filters, "batch": _MULTI_MAX}
    try:
        return [m async for m in _direct(nc, stream, req, timeout)]
    except APIError as exc:
        if exc.code == 413:
            raise TooManySubjects(f"more than {_MULTI_MAX} subjects match {subject}") from exc
        raise


class TooManySubjects(Exception):
    """A multi-subject read matched more subjects than the server answers for at once."""


def _direct_batch(
    nc: NATS, stream: str, subject: str, seq: int, timeout: float, batch: int = _BATCH
) -> AsyncGenerator[StoredMsg, None]:
    return _direct(nc, stream, {"seq": seq, "next_by_subj": subject, "batch": batch}, timeout)


async def _direct(
    nc: NATS, stream: str, req: dict[str, Any], timeout: float
) -> AsyncGenerator[StoredMsg, None]:
    """The messages a batched direct get answers, up to its end-of-batch marker. On a
    connection the broker keeps in one tenant, the request goes to the hubs' read relay,
    which checks its filters are the tenant's and forwards it (the answer comes straight
    from the server)."""
    inbox = nc.new_inbox()
    queue: asyncio.Queue[tuple[dict[str, str], bytes]] = asyncio.Queue()

    async def collect(msg: object) -> None:
        queue.put_nowait((getattr(msg, "headers", None) or {}, getattr(msg, "data", b"")))

    sub = await nc.subscribe(inbox, cb=collect)
    try:
        target = f"$JS.API.DIRECT.GET.{stream}"
        filters = req.get("multi_last") or [req.get("next_by_subj", "")]
        relay = read_relay(nc, str(filters[0]))
        if relay is not None:
            target, req = relay, {**req, "stream": stream}
        await nc.publish(target, json.dumps(req).encode(), reply=inbox)
        while True:
            headers, data = await _next_answer(nc, queue, target, timeout)
            msg = _lift(headers, data)
            if msg is None:
                return
            yield msg
    finally:
        with contextlib.suppress(Exception):  # see tail()
            await sub.unsubscribe()


async def _next_answer(
    nc: NATS, queue: asyncio.Queue[tuple[dict[str, str], bytes]], target: str, timeout: float
) -> tuple[dict[str, str], bytes]:
    """The next answer; a refusal by the broker (reported apart, asynchronously) is raised
    as soon as it is known rather than after the timeout."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        left = deadline - asyncio.get_running_loop().time()
        try:
            async with asyncio.timeout(min(0.25, max(left, 0.0))):
                return await queue.get()
        except TimeoutError:
            refused = violation_for(nc, target)
            if refused is not None:
                raise refused from None
            if left <= 0.25:
                raise


def _lift(headers: dict[str, str], data: bytes) -> StoredMsg | None:
    status = headers.get("Status")
    if status in ("404", "204"):
        return None
    if status == "403":
        raise PermissionDeniedError(f"read refused: {headers.get('Description', '')}")
    if status == "503" and not data:
        raise NoRespondersError  # no hub answers a relayed read (or the stream is gone)
    if status:
        raise APIError(code=int(status), description=headers.get("Description", ""))
    return StoredMsg(
        subject=headers["Nats-Subject"],
        seq=int(headers["Nats-Sequence"]),
        data=data,
        headers=headers,
    )


class Puller:
    """Pull from a durable consumer by free slots, handing each message on as it arrives.

    nats-py's ``fetch(batch=n)`` holds the first message until the batch fills or the
    request expires, which costs seconds under light load. Here one pull request is kept
    open for as many messages as there are free slots; the server pushes each message the
    moment it is available, and a new request goes out when the last one is used up or
    expires. The slots are the backpressure: never more than ``slots`` messages held.
    ``window(free)``, if given, may shrink a request further (waiting until it is at least
    one): the hub's per-tenant limits use it.
    """

    def __init__(
        self,
        nc: NATS,
        stream: str,
        durable: str,
        slots: int,
        handler: Callable[[Msg], Awaitable[None]],
        *,
        expires: float = 5.0,
        window: Callable[[int], Awaitable[int]] | None = None,
    ) -> None:
        self._nc = nc
        self._subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._slots = slots
        self._handler = handler
        self._expires = expires
        self._window = window
        self._inflight = 0
        self._requested = 0  # messages asked for in the open request, not yet delivered
        self._deadline = 0.0
        self._pause_until = 0.0  # no consumer leader answered: ask again after a pause
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._sub: Any = None

    @property
    def inflight(self) -> int:
        return self._inflight

    async def run(self) -> None:
        """Pull until cancelled; in-flight handlers keep running (see :meth:`drain`)."""
        inbox = self._nc.new_inbox()
        self._sub = await self._nc.subscribe(inbox, cb=self._on_msg)
        loop = asyncio.get_running_loop()
        try:
            while True:
                now = loop.time()
                if self._requested and now > self._deadline:
                    self._requested = 0  # the request was lost (reconnect): ask again
                if self._pause_until > now:
                    await asyncio.sleep(self._pause_until - now)
                    now = loop.time()
                free = self._slots - self._inflight - self._requested
                if self._requested == 0 and free > 0:
                    if self._window is not None:
                        free = await self._window(free)
                        now = loop.time()
                    req = {"batch": free, "expires": int(self._expires * 1e9)}
                    await self._nc.publish(self._subject, json.dumps(req).encode(), reply=inbox)
                    self._requested = free
                    self._deadline = now + self._expires + 2.0
                self._wake.clear()
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
                # that lands as the wait completes, and stop() would then wait forever.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._expires + 2.5):
                        await self._wake.wait()
        finally:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()

    async def drain(self, timeout: float) -> None:
        """Wait up to ``timeout`` for in-flight handlers to finish."""
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=timeout)

    async def cancel(self) -> None:
        """Cancel the handlers still running (after a drain that ran out of time)."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)

    async def _on_msg(self, msg: Msg) -> None:
        status = (msg.headers or {}).get("Status") if not msg.data else None
        if status is not None:
            if status in ("408", "409", "404", "503"):  # expired, or refused
                if status == "503":  # no responders: the consumer has no leader (an election)
                    self._pause_until = asyncio.get_running_loop().time() + _NO_LEADER_PAUSE
                self._requested = 0
                self._wake.set()
            return  # 100: idle heartbeat
        self._requested = max(self._requested - 1, 0)
        self._inflight += 1
        task = asyncio.create_task(self._handle(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if self._requested == 0:
            self._wake.set()

    async def _handle(self, msg: Msg) -> None:
        try:
            await self._handler(msg)
        finally:
            self._inflight -= 1
            self._wake.set()
