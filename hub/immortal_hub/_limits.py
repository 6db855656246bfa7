"""Per-tenant limits, and a fair share of the hub among tenants.

Every input a hub applies is admitted here first. Three rules, per hub:

- **Fair share**: a hub applies at most ``total`` inputs at once across all tenants. Past
  that, a tenant holding its share (``total`` / active tenants) or more waits, so a tenant
  that bursts cannot keep a quiet one out: the quiet one is under its share and admitted.
- **In flight**: a tenant's ``max_in_flight`` caps the inputs of that tenant applied at once.
- **Rate**: a tenant's ``rate`` is a token bucket (``burst`` tokens, refilled at ``rate``
  per second); each input takes one.

A request-reply input that may not be admitted now is refused (the hub replies ``busy``
and the sender queues it durably in the tenant's own ``IMM_IN`` subjects); an input from
``IMM_IN`` waits for admission, and the tenant's pullers ask JetStream for no more
messages than could be admitted now. That is backpressure: nothing is dropped. While a
tenant's durable inputs wait, its request-reply inputs are refused, so they queue behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

__all__ = ["DEFAULT", "Admission", "TenantLimits", "TokenBucket", "parse_tenant_limit"]

DEFAULT = "*"  # the key of the limits every tenant without its own gets
_EPSILON = 1e-9  # a token refilled by float arithmetic may be a hair short of one


@dataclass(frozen=True)
class TenantLimits:
    """Limits on one tenant's inputs, enforced by each hub on its own.

    >>> Hub(url, tenant_limits={"*": TenantLimits(max_in_flight=64),
    ...                         "acme": TenantLimits(max_in_flight=16, rate=200)})

    ``None`` means unlimited (beyond the hub's fair share). ``burst`` is the bucket size,
    by default one second of ``rate`` (at least 1).
    """

    max_in_flight: int | None = None
    rate: float | None = None
    burst: float | None = None

    def __post_init__(self) -> None:
        if self.max_in_flight is not None and self.max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, not {self.max_in_flight}")
        if self.rate is not None and not self.rate > 0:
            raise ValueError(f"rate must be positive, not {self.rate}")
        if self.burst is not None and not self.burst >= 1:
            raise ValueError(f"burst must be at least 1, not {self.burst}")

    @property
    def bucket_size(self) -> float:
        if self.burst is not None:
            return self.burst
        return max(self.rate or 1.0, 1.0)


def parse_tenant_limit(text: str) -> tuple[str, TenantLimits]:
    """``"acme=in_flight:50,rate:100"`` → ``("acme", TenantLimits(50, 100.0))``.

    Keys: ``in_flight``, ``rate`` (inputs per second), ``burst``. The tenant ``*`` sets the
    default for every tenant without its own line.
    """
    tenant, sep, spec = text.partition("=")
    tenant = tenant.strip()
    if not sep or not tenant or not spec.strip():
        raise ValueError(f"{text!r}: expected TENANT=in_flight:N,rate:R")
    values: dict[str, float] = {}
    for item in spec.split(","):
        key, colon, raw = item.strip().partition(":")
        if not colon or key not in ("in_flight", "rate", "burst") or key in values:
            raise ValueError(f"{text!r}: {item.strip()!r} is not in_flight:N, rate:R or burst:B")
        try:
            values[key] = float(raw)
        except ValueError as exc:
            raise ValueError(f"{text!r}: {raw!r} is not a number") from exc
    in_flight = values.get("in_flight")
    if in_flight is not None and in_flight != int(in_flight):
        raise ValueError(f"{text!r}: in_flight must be a whole number")
    return tenant, TenantLimits(
        max_in_flight=None if in_flight is None else int(in_flight),
        rate=values.get("rate"),
        burst=values.get("burst"),
    )


class TokenBucket:
    """``size`` tokens at most, refilled continuously at ``rate`` per second."""

    def __init__(self, rate: float, size: float, now: float) -> None:
        self.rate = rate
        self.size = size
        self._tokens = size
        self._at = now

    def available(self, now: float) -> float:
        if now > self._at:
            self._tokens = min(self.size, self._tokens + (now - self._at) * self.rate)
            self._at = now
        return self._tokens

    def take(self, now: float, n: float = 1.0) -> bool:
        """Take ``n`` tokens if there are that many (give or take rounding)."""
        if self.available(now) < n - _EPSILON:
            return False
        self._tokens = max(self._tokens - n, 0.0)
        return True

    def wait_time(self, now: float, n: float = 1.0) -> float:
        """Seconds until ``n`` tokens are there (0 if they are now)."""
        missing = n - _EPSILON - self.available(now)
        return max(missing, 0.0) / self.rate


@dataclass
class _Tenant:
    limits: TenantLimits
    bucket: TokenBucket | None
    in_flight: int = 0
    peak: int = 0  # the most in flight at once, for tests
    waiting: deque[asyncio.Future[None]] = field(default_factory=deque)


class Admission:
    """Admits one tenant's input at a time; ``release`` it when it has been applied."""

    def __init__(
        self,
        limits: Mapping[str, TenantLimits] | None = None,
        *,
        total: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if total < 1:
            raise ValueError(f"total must be at least 1, not {total}")
        self.limits = dict(limits or {})
        self.total = total
        self._clock = clock
        self._tenants: dict[str, _Tenant] = {}
        self._in_flight = 0
        self._watchers: list[asyncio.Future[None]] = []
        self._pump_at: asyncio.TimerHandle | None = None

    def limits_for(self, tenant: str) -> TenantLimits:
        return self.limits.get(tenant) or self.limits.get(DEFAULT) or TenantLimits()

    def in_flight(self, tenant: str | None = None) -> int:
        """Inputs being applied now: of ``tenant``, or of every tenant."""
        if tenant is None:
            return self._in_flight
        t = self._tenants.get(tenant)
        return t.in_flight if t else 0

    def peak(self, tenant: str) -> int:
        """The most inputs of ``tenant`` applied at once so far."""
        t = self._tenants.get(tenant)
        return t.peak if t else 0

    def by_tenant(self) -> dict[str, int]:
        """Inputs being applied now, per tenant seen (safe to call from another thread)."""
        return {name: t.in_flight for name, t in list(self._tenants.items())}

    def try_admit(self, tenant: str) -> bool:
        """Admit now or refuse; never ahead of the tenant's inputs that already wait."""
        t = self._tenant(tenant)
        if t.waiting or self._blocked(t, self._clock()) is not None:
            return False
        self._take(t)
        return True

    async def admit(self, tenant: str) -> None:
        """Wait (in order, per tenant) until the input may be applied."""
        t = self._tenant(tenant)
        if not t.waiting and self._blocked(t, self._clock()) is None:
            self._take(t)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        t.waiting.append(fut)
        self._pump()
        try:
            await fut
        except asyncio.CancelledError:
            with contextlib.suppress(ValueError):
                t.waiting.remove(fut)
            if fut.done() and not fut.cancelled():
                self.release(tenant)  # admitted as we were cancelled: give the slot back
            raise

    def release(self, tenant: str) -> None:
        t = self._tenants[tenant]
        t.in_flight -= 1
        self._in_flight -= 1
        self._pump()

    async def window(self, tenant: str, wanted: int) -> int:
        """How many of ``wanted`` inputs could be admitted now; waits until at least one.

        Pullers ask JetStream for this many, so durable inputs are not taken from the
        stream (where other hubs could serve them) only to wait here.
        """
        t = self._tenant(tenant)
        while True:
            room, delay = self._room(t, self._clock())
            if room >= 1:
                return min(wanted, room)
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._watchers.append(fut)
            try:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(None if math.isinf(delay) else delay):
                        await fut
            finally:
                with contextlib.suppress(ValueError):
                    self._watchers.remove(fut)

    # -- helpers -------------------------------------------------------------------------

    def _tenant(self, tenant: str) -> _Tenant:
        t = self._tenants.get(tenant)
        if t is None:
            limits = self.limits_for(tenant)
            bucket = None
            if limits.rate is not None:
                bucket = TokenBucket(limits.rate, limits.bucket_size, self._clock())
            t = self._tenants[tenant] = _Tenant(limits, bucket)
        return t

    def _share(self, t: _Tenant) -> int:
        active = sum(1 for o in self._tenants.values() if o is t or o.in_flight or o.waiting)
        return max(1, self.total // active)

    def _blocked(self, t: _Tenant, now: float) -> float | None:
        """None if ``t`` may be admitted now, else how long to wait (inf: until a release)."""
        cap = t.limits.max_in_flight
        if cap is not None and t.in_flight >= cap:
            return math.inf
        if self._in_flight >= self.total and t.in_flight >= self._share(t):
            return math.inf
        if t.bucket is not None and t.bucket.available(now) < 1 - _EPSILON:
            return t.bucket.wait_time(now)
        return None

    def _room(self, t: _Tenant, now: float) -> tuple[int, float]:
        """(inputs ``t`` could start now beyond those waiting, and if none, how long to wait)."""
        room = max(self.total - self._in_flight, self._share(t) - t.in_flight)
        if t.limits.max_in_flight is not None:
            room = min(room, t.limits.max_in_flight - t.in_flight)
        delay = math.inf
        if t.bucket is not None:
            tokens = t.bucket.available(now) + _EPSILON
            room = min(room, math.floor(tokens))
            if tokens < 1:
                delay = t.bucket.wait_time(now)
        room -= len(t.waiting)
        if room < 1 and len(t.waiting) and t.bucket is not None:
            delay = t.bucket.wait_time(now, len(t.waiting) + 1)
        return room, delay

    def _take(self, t: _Tenant) -> None:
        t.in_flight += 1
        t.peak = max(t.peak, t.in_flight)
        self._in_flight += 1
        if t.bucket is not None:
            t.bucket.take(self._clock())

    def _pump(self) -> None:
        """Admit waiters, one per tenant per round, until none can go; wake the pullers."""
        now = self._clock()
        soonest = math.inf
        progress = True
        while progress:
            progress = False
            for t in self._tenants.values():
                while t.waiting and t.waiting[0].done():  # cancelled
                    t.waiting.popleft()
                if not t.waiting:
                    continue
                delay = self._blocked(t, now)
                if delay is None:
                    self._take(t)
                    t.waiting.popleft().set_result(None)
                    progress = True
                else:
                    soonest = min(soonest, delay)
        for fut in self._watchers:
            if not fut.done():
                fut.set_result(None)
        self._watchers.clear()
        if not math.isinf(soonest):
            self._pump_later(soonest)

    def _pump_later(self, delay: float) -> None:
        loop = asyncio.get_running_loop()
        when = loop.time() + delay
        if self._pump_at is not None and not self._pump_at.cancelled():
            if self._pump_at.when() <= when:
                return
            self._pump_at.cancel()
        self._pump_at = loop.call_at(when, self._pump_on_time)

    def _pump_on_time(self) -> None:
        self._pump_at = None
        self._pump()
