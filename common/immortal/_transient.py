"""Riding out a cluster's leader elections: which failures pass, and retrying through them.

When a node of a JetStream cluster dies, the streams, consumers and buckets it led have no
leader until the others elect one (seconds), and clients connected to it reconnect to
another node. Meanwhile requests time out or come back "no responders" or 503. Those
failures say nothing about the request itself, so an operation that is safe to repeat
(a publish with a ``Nats-Msg-Id`` or an expected sequence, a KV put of the same value, a
read) is repeated with capped exponential backoff, within a time budget that covers an
election or two; past it, the error goes to the caller as before.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from nats.aio.client import Client as NATS
from nats.errors import (
    ConnectionReconnectingError,
    NoRespondersError,
    OutboundBufferLimitError,
    StaleConnectionError,
)
from nats.errors import TimeoutError as NatsTimeout
from nats.js.client import JetStreamContext
from nats.js.errors import APIError, NoStreamResponseError, ServiceUnavailableError
from nats.js.kv import KeyValue

from immortal._requests import Requests

__all__ = ["RETRY_BUDGET", "is_transient", "key_value", "publish", "retry_transient"]

log = logging.getLogger(__name__)

T = TypeVar("T")

# Seconds an operation keeps being retried: an election takes a few seconds (we measured
# ~5 s for a stream whose leader was SIGKILLed), and a request sent into it may wait out
# its own timeout (5 s) before the next try.
RETRY_BUDGET = 20.0
_FIRST_DELAY = 0.05
_MAX_DELAY = 1.0

# JetStream API errors that mean "no leader here now", not "bad request":
# 10008 cluster temporarily unavailable, 10009 not the leader, 10118 stream offline; and
# 10005 no suitable peers for placement, which a create gets while a peer is offline (a
# node restarting, or one the meta leader has not heard from lately under load); a
# cluster too small for the replicas asked still fails, once the budget is spent.
_TRANSIENT_ERR_CODES = frozenset({10005, 10008, 10009, 10118})

_TRANSIENT_TYPES = (
    NatsTimeout,
    TimeoutError,
    NoRespondersError,
    NoStreamResponseError,
    ServiceUnavailableError,
    ConnectionReconnectingError,
    StaleConnectionError,
    OutboundBufferLimitError,
)


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` may pass once the cluster has a leader again (or we reconnected)."""
    if isinstance(exc, _TRANSIENT_TYPES):
        return True
    if isinstance(exc, APIError):  # some subclasses leave the code unset
        code, err_code = getattr(exc, "code", None), getattr(exc, "err_code", None)
        return code == 503 or err_code in _TRANSIENT_ERR_CODES
    return False


async def retry_transient(
    op: Callable[[], Awaitable[T]], *, what: str, budget: float = RETRY_BUDGET
) -> T:
    """Run ``op``; while it fails transiently and the budget lasts, back off and run it again.

    Only for operations that are safe to repeat: an attempt that timed out may have taken
    effect.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + budget
    delay = _FIRST_DELAY
    while True:
        try:
            return await op()
        except Exception as exc:
            pause = delay * random.uniform(0.5, 1.0)  # spread the retries of many callers
            if not is_transient(exc) or loop.time() + pause > deadline:
                raise
            log.debug("%s: %r; again in %.2f s", what, exc, pause)
            await asyncio.sleep(pause)
            delay = min(delay * 2, _MAX_DELAY)


async def publish(nc: NATS, subject: str, data: bytes, *, headers: dict[str, str]) -> int:
    """A JetStream publish (timer-free, see ``_requests``) through leader elections; returns
    the stream sequence. Only for a publish that a repeat stores once: one with a
    ``Nats-Msg-Id``, or an expected sequence."""
    requests = Requests.of(nc)
    return await retry_transient(lambda: requests.publish(subject, data, headers), what=subject)


async def key_value(js: JetStreamContext, bucket: str) -> KeyValue:
    """A bucket's handle (looking it up is a stream-info request), through leader elections.

    A connection that authenticated with a token may not ask for stream info (it would list
    every tenant's keys): its handle is made without asking, for a bucket with direct gets
    (every bucket the hubs create).
    """
    from immortal.security.connection import relays_reads

    if relays_reads(js._nc):
        return KeyValue(
            name=bucket, stream=f"KV_{bucket}", pre=f"$KV.{bucket}.", js=js, direct=True
        )
    return await retry_transient(lambda: js.key_value(bucket), what=bucket)
