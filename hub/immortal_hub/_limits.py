"""Per-tenant limits, and fair shares of the hub among tenants.

Every input a hub applies (heartbeats aside) first *enters* the hub, then waits for one of
its *slots*:

- **Entry** bounds what a tenant holds in the hub (queued for a slot or being applied).
  At most ``total`` inputs across all tenants; past that, a tenant holding its share
  (``total`` / tenants with work) or more may not enter, so a burst from one tenant never
  keeps another out. A tenant's own ``max_in_flight`` caps what it holds; its ``rate`` is a
  token bucket (``burst`` tokens, refilled at ``rate`` per second), one token per input.
- **Slots** bound how many inputs are applied at once: ``slots``, handed round-robin among
  the tenants with inputs waiting, first come first served within a tenant. So a quiet
  tenant's input waits for the next free slot, not behind a busy tenant's queue.

A request-reply input that may not enter now is refused (the hub replies ``busy`` and the
sender queues it durably in the tenant's own ``IMM_IN`` subjects); an input from
``IMM_IN`` waits to enter, and the tenant's pullers ask JetStream for no more messages than
could enter now. That is backpressure: nothing is dropped. While a tenant's durable inputs
wait to enter, its request-reply starts are refused, so they queue behind them; results of
work already started may go ahead (``try_enter(ahead=True)``), into a reserve the pullers
leave free.
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
    name: str
    limits: TenantLimits
    bucket: TokenBucket | None
    held: int = 0  # entered: waiting for a slot, or being applied
    applying: int = 0  # holding a slot
    peak: int = 0  # the most held at once, for tests
    ready: bool = False  # in the round of tenants waiting for a slot
    entering: deque[asyncio.Future[None]] = field(default_factory=deque)
    queued: deque[asyncio.Future[None]] = field(default_factory=deque)


class Admission:
    """Entry and slots for the inputs of one hub; ``release`` each once it is applied."""

    def __init__(
        self,
        limits: Mapping[str, TenantLimits] | None = None,
        *,
        total: int = 1024,
        slots: int = 64,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if total < 1 or slots < 1:
            raise ValueError(f"total and slots must be at least 1, not {total} and {slots}")
        self.limits = dict(limits or {})
        self.total = total
        self.slots = slots
        self.reserve = max(1, slots // 16) if slots > 1 else 0  # see _slots_for
        self._clock = clock
        self._tenants: dict[str, _Tenant] = {}
        self._held = 0
        self._applying = 0
        self._ready: deque[_Tenant] = deque()  # round-robin over tenants waiting for a slot
        self._watchers: list[asyncio.Future[None]] = []
        self._pump_at: asyncio.TimerHandle | None = None

    def limits_for(self, tenant: str) -> TenantLimits:
        return self.limits.get(tenant) or self.limits.get(DEFAULT) or TenantLimits()

    def in_flight(self, tenant: str | None = None) -> int:
        """Inputs held now (waiting for a slot or being applied): of ``tenant``, or all."""
        if tenant is None:
            return self._held
        t = self._tenants.get(tenant)
        return t.held if t else 0

    def peak(self, tenant: str) -> int:
        """The most inputs of ``tenant`` held at once so far."""
        t = self._tenants.get(tenant)
        return t.peak if t else 0

    def by_tenant(self) -> dict[str, int]:
        """Inputs held now, per tenant seen (safe to call from another thread)."""
        return {name: t.held for name, t in list(self._tenants.items())}

    def try_enter(self, tenant: str, *, ahead: bool = False) -> bool:
        """Enter now or refuse; not ahead of the tenant's inputs that wait, unless ``ahead``.

        Results of work already started go ``ahead`` of queued starts: finishing what was
        started first keeps a backlog from slowing every run down, and takes the reserve
        that pullers leave free (see :meth:`window`).
        """
        t = self._tenant(tenant)
        if (t.entering and not ahead) or self._blocked(t, self._clock()) is not None:
            return False
        self._enter(t)
        return True

    async def enter(self, tenant: str) -> None:
        """Wait (in order, per tenant) until the input may enter."""
        t = self._tenant(tenant)
        if not t.entering and self._blocked(t, self._clock()) is None:
            self._enter(t)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        t.entering.append(fut)
        self._pump()
        try:
            await fut
        except asyncio.CancelledError:
            with contextlib.suppress(ValueError):
                t.entering.remove(fut)
            if fut.done() and not fut.cancelled():
                self._leave(t)  # entered as we were cancelled: give the place back
            raise

    async def start(self, tenant: str) -> None:
        """Wait for a slot to apply an input that has entered."""
        t = self._tenants[tenant]
        if self._applying < self._slots_for(t) and not self._ready:
            self._take_slot(t)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        t.queued.append(fut)
        if not t.ready:
            t.ready = True
            self._ready.append(t)
        self._pump()
        try:
            await fut
        except asyncio.CancelledError:
            with contextlib.suppress(ValueError):
                t.queued.remove(fut)
            if fut.done() and not fut.cancelled():
                self._free_slot(t)
            self._leave(t)
            raise

    async def admit(self, tenant: str) -> None:
        """Enter, then take a slot: for inputs that may wait (those from ``IMM_IN``)."""
        await self.enter(tenant)
        await self.start(tenant)

    def release(self, tenant: str) -> None:
        """The input has been applied (or given up): free its slot and its place."""
        t = self._tenants[tenant]
        self._free_slot(t)
        self._leave(t)

    async def window(self, tenant: str, wanted: int) -> int:
        """How many of ``wanted`` inputs could enter now; waits until at least one.

        Pullers ask JetStream for this many, so durable inputs are not taken from the
        stream (where other hubs could serve them) only to wait here. They leave an eighth
        of the tenant's places to request-reply inputs that go ``ahead``.
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
            t = self._tenants[tenant] = _Tenant(tenant, limits, bucket)
        return t

    def _share(self, t: _Tenant) -> int:
        active = sum(1 for o in self._tenants.values() if o is t or o.held or o.entering)
        return max(1, self.total // active)

    def _blocked(self, t: _Tenant, now: float) -> float | None:
        """None if ``t`` may enter now, else how long to wait (inf: until a release)."""
        cap = t.limits.max_in_flight
        if cap is not None and t.held >= cap:
            return math.inf
        if self._held >= self.total and t.held >= self._share(t):
            return math.inf
        if t.bucket is not None and t.bucket.available(now) < 1 - _EPSILON:
            return t.bucket.wait_time(now)
        return None

    def _room(self, t: _Tenant, now: float) -> tuple[int, float]:
        """(inputs ``t`` could enter now beyond those waiting, and if none, how long to wait)."""
        cap = t.limits.max_in_flight
        reserve = (self.total if cap is None else cap) // 8
        room = max(self.total - self._held, self._share(t) - t.held) - reserve
        if cap is not None:
            room = min(room, cap - reserve - t.held)
        delay = math.inf
        if t.bucket is not None:
            tokens = t.bucket.available(now) + _EPSILON
            room = min(room, math.floor(tokens))
            if tokens < 1:
                delay = t.bucket.wait_time(now)
        room -= len(t.entering)
        if room < 1 and t.entering and t.bucket is not None:
            delay = t.bucket.wait_time(now, len(t.entering) + 1)
        return room, delay

    def _enter(self, t: _Tenant) -> None:
        t.held += 1
        t.peak = max(t.peak, t.held)
        self._held += 1
        if t.bucket is not None:
            t.bucket.take(self._clock())

    def _leave(self, t: _Tenant) -> None:
        t.held -= 1
        self._held -= 1
        self._pump()

    def _pump(self) -> None:
        """Let waiting inputs enter, hand out free slots, wake the pullers."""
        soonest = self._pump_entries()
        self._pump_slots()
        for fut in self._watchers:
            if not fut.done():
                fut.set_result(None)
        self._watchers.clear()
        if not math.isinf(soonest):
            self._pump_later(soonest)

    def _pump_entries(self) -> float:
        """Let waiting inputs enter, a round per tenant; return when to try again."""
        now = self._clock()
        soonest = math.inf
        progress = True
        while progress:
            progress = False
            for t in self._tenants.values():
                while t.entering and t.entering[0].done():  # cancelled
                    t.entering.popleft()
                if not t.entering:
                    continue
                delay = self._blocked(t, now)
                if delay is None:
                    self._enter(t)
                    t.entering.popleft().set_result(None)
                    progress = True
                else:
                    soonest = min(soonest, delay)
        return soonest

    def _slots_for(self, t: _Tenant) -> int:
        """The slots ``t`` may fill: all of them, but the last few (``reserve``) only while
        it applies fewer than that. A tenant whose burst fills the hub leaves them free, so
        a quiet tenant's input starts at once instead of when one of the burst's ends."""
        return self.slots if t.applying < self.reserve else self.slots - self.reserve

    def _take_slot(self, t: _Tenant) -> None:
        self._applying += 1
        t.applying += 1

    def _free_slot(self, t: _Tenant) -> None:
        self._applying -= 1
        t.applying -= 1

    def _pump_slots(self) -> None:
        """Hand out free slots round-robin among the tenants with inputs waiting (a tenant
        that may not fill the reserved slots keeps its turn)."""
        passed: list[_Tenant] = []
        while self._applying < self.slots and self._ready:
            t = self._ready.popleft()
            while t.queued and t.queued[0].done():  # cancelled
                t.queued.popleft()
            if t.queued and self._applying >= self._slots_for(t):
                passed.append(t)
                continue
            if t.queued:
                self._take_slot(t)
                t.queued.popleft().set_result(None)
            if t.queued:
                self._ready.append(t)  # to the back of the round
            else:
                t.ready = False
        self._ready.extendleft(reversed(passed))

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
