"""Where an input's signature is checked, before the hub applies anything.

A signed input (``immortal.security.signing``) is accepted when, in this order:

1. its key id is in the tenant's registry (``imm-policy`` ``<tenant>.keys``, watched, so
   a change applies within a second) and valid now (not before ``not_before``, not
   retired); a key of another tenant is unknown here;
2. ``created``/``expires`` hold: the lifetime is at most ``max_lifetime`` and the
   reference time lies in ``[created - skew, expires + skew]``. The reference time is
   the hub's clock for an input by request, and for one queued in ``IMM_IN`` the time
   the server stored it (the ack subject's timestamp): an input that waited durably
   through an outage still counts, a copy stored later does not;
3. ``Nats-Msg-Id``, when there is one, is covered, and the signature verifies over the
   subject the input arrived on (so one signed for ``imm.rpc`` cannot be replayed into
   ``imm.in``, nor onto another tenant, queue, kind or sender);
4. the key's owner (``subject``/``role`` in the registry, when set) is the
   broker-stamped sender (auth on);
5. its nonce was never seen by any hub. For a start, a workflow task's result or an
   attempt's result by request (:data:`RECORDED`), the run itself remembers it: the
   transition that applies the input records the nonce in the run's state
   (``RunState.nonces``, while a copy could still pass the window), under the append's
   expected-sequence guard, so the hub whose append wins is the only one that applies
   it. A copy applies to nothing, being stale by run state, and the hub, deciding that
   on a fresh read, finds the nonce there and refuses it (:class:`RunNonce`). Otherwise
   (other kinds, or a run's ring full): an atomic create of ``<tenant>.<nonce>`` in the
   ``imm-nonces`` bucket, whose entries expire with the window. One queued in ``IMM_IN``
   is covered by the stream's duplicate window on its signed ``Nats-Msg-Id`` as long as
   the accepted span (``max_lifetime + 2 * skew``) fits in that window, and the create
   is made for those too if it does not (see docs/security.md).

A refusal is an ``IMM_AUDIT`` record (reason ``signature``, the check, the key id) and a
:class:`SignatureRefused`, which the hub dead-letters with the message (a request gets it
as its rejection). Unsigned input is refused when the tenant requires signatures:
``Hub(require_signatures=True)``, or auth on and a non-empty registry for the tenant.
The hub's own inputs (sender ``hub``) and fired timers are the broker's to vouch for.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, NamedTuple

import msgpack
from nacl.signing import VerifyKey
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import KeyNotFoundError
from nats.js.errors import NotFoundError as JsNotFound
from nats.js.kv import KeyValue

from immortal._jetstream import is_wrong_last_sequence
from immortal._names import Names
from immortal._requests import Requests
from immortal._transient import key_value
from immortal._wire import RunState
from immortal.security import HUB_PID
from immortal.security.audit import AuditRecord, publish_audit, publish_refusal
from immortal.security.keys import KeyRegistry, RegisteredKey, registry_key
from immortal.security.sessions import SESSION_ALG, SESSION_KIND
from immortal.security.signing import ALG as ALG_NAME
from immortal.security.signing import (
    SignatureError,
    SignatureParams,
    SignatureRefusal,
    mac_base,
    parse_signature,
    public_key_bytes,
    verify_signature,
)
from immortal_hub._sessions import SessionStore
from immortal_hub._transitions import InvalidInput, Outcome

__all__ = [
    "MAX_LIFETIME_S",
    "SKEW_S",
    "RunNonce",
    "SignatureCheck",
    "SignatureRefused",
    "SignedBy",
]

log = logging.getLogger(__name__)

MAX_LIFETIME_S = 60.0  # the longest a signature may be valid (expires - created)
SKEW_S = 30.0  # clock difference allowed on each side of [created, expires]
_REREAD_S = 1.0  # an unknown key id reads the registry again at most this often per tenant
_UNSIGNED_OK = frozenset({"timer", "child"})  # what the broker or a hub sends, never a client
#: Inputs by request whose nonce is created while the hub applies them and settles after
#: the hub answered. A copy of one changes nothing by run state alone: an attempt's start
#: finds its timers armed (deduped in IMM_TIMERS's window, so only while a signature's
#: accepted span fits in it); so the copy's refusal (audited, dead-lettered) may come
#: after its (empty) apply. Not a signal, cancel or terminate (their ids are kept for the
#: last 64 inputs only) nor a heartbeat (its details would be written again).
OVERLAPPED = frozenset({"started"})
#: Inputs by request whose nonce the run records in the transition that applies them
#: (:class:`RunNonce`); a copy finds it there. Each of them appends to the run when it is
#: applied, and a copy of one changes nothing by run state (the run exists, the task or
#: the attempt is settled).
RECORDED = frozenset({"start", "wft", "act"})
NONCES_KEPT = 16  # a run's ring of nonces; past it, the next ones go to imm-nonces


class SignatureRefused(InvalidInput):
    """An input refused for its signature (or the lack of one); the message names the
    check and the key id."""

    def __init__(self, error: SignatureError) -> None:
        super().__init__(f"signature refused ({error.refusal}): {error}")
        self.error = error


class SignedBy(NamedTuple):
    """Who signed an accepted input: what history records beside the sender.

    ``later``, when set, is a nonce to create once the hub answered (an input by
    request whose copy is harmless by run state, see :data:`OVERLAPPED`): its
    :meth:`RunNonce.create` raises :class:`SignatureRefused` for a replay. ``recorded``:
    the nonce the run records instead (:data:`RECORDED`)."""

    key_id: str
    subject: str
    later: RunNonce | None = None
    recorded: RunNonce | None = None


class RunNonce(NamedTuple):
    """The nonce of an input by request that its run records (:data:`RECORDED`), for the
    hub's apply: :meth:`record` it in the transition that applies the input, or
    :meth:`settle` it when the input applies to nothing."""

    check: SignatureCheck
    tenant: str
    subject: str
    params: SignatureParams
    created: bool = False  # its create in imm-nonces was made already (:meth:`create`)

    @property
    def until(self) -> int:
        """Until when (s) a copy could still pass the window, on any hub's clock."""
        return self.params.expires + 2 * int(self.check.skew + 1)

    def record(self, outcome: Outcome) -> bool:
        """Add the nonce to the state a transition appends, dropping the expired ones;
        False when the ring is full (then :meth:`create` it before the append)."""
        state = outcome.state
        assert state is not None, "a transition that appends has a state"
        now = self.check.now()
        kept = [n for n in state.nonces or () if n[1] >= now]
        if len(kept) >= NONCES_KEPT:
            return self.created
        state.nonces = [*kept, (self.params.nonce, self.until)]
        return True

    async def settle(self, state: RunState | None) -> None:
        """The input applies to nothing: a copy of one the run recorded is a replay
        (refused and audited, as any); otherwise its nonce is created in ``imm-nonces``,
        which refuses a copy of one kept there."""
        if state is not None and any(n[0] == self.params.nonce for n in state.nonces or ()):
            error = _replay(self.params)
            await self.check.refuse(self.tenant, self.subject, error)
            raise SignatureRefused(error)
        if not self.created:
            await self.create()

    async def create(self) -> RunNonce:
        """Create the nonce in ``imm-nonces`` (a replay is refused, audited); the same
        nonce, marked created, which the run still looks for and records."""
        await self.check.settle_nonce(self.tenant, self.subject, self.params)
        return self._replace(created=True)


class SignatureCheck:
    """One hub's signature checks. ``who(sender)`` gives the sender's principal record
    (the guard's)."""

    def __init__(
        self,
        nc: Any,
        names: Names,
        *,
        hub_id: str,
        secure: bool,
        require: bool = False,
        duplicate_window: float = 120.0,
        max_lifetime: float = MAX_LIFETIME_S,
        skew: float = SKEW_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.nc, self.names, self.hub_id = nc, names, hub_id
        self.secure, self.require = secure, require
        self.max_lifetime, self.skew = max_lifetime, skew
        # Within this span of a signature's time, IMM_IN's dedupe drops any second copy
        # (and IMM_TIMERS's an attempt's timers armed again).
        self.queued_need_nonce = max_lifetime + 2 * skew > duplicate_window
        self.overlapped = OVERLAPPED - ({"started"} if self.queued_need_nonce else set())
        self._clock = clock
        self._registries: dict[str, KeyRegistry] = {}
        self._verify_keys: dict[str, VerifyKey] = {}
        self._reread: dict[str, float] = {}
        self._policy: KeyValue | None = None
        self._nonces: KeyValue | None = None
        self._nonce_prefix = f"$KV.{names.bucket_nonces}."
        self._watch: asyncio.Task[None] | None = None
        self.sessions = SessionStore(nc, names, clock=clock)
        self.verified = 0
        self.maced = 0  # of those, authenticated under a session
        self.refused = 0
        self.nonces_written = 0

    async def start(self) -> None:
        """Load every tenant's registry, then keep watching it."""
        js = self.nc.jetstream()
        self._policy = await key_value(js, self.names.bucket_policy)
        self._nonces = await key_value(js, self.names.bucket_nonces)
        await self.sessions.start()
        self._watch = asyncio.create_task(self._follow(await self._load()))
        if self.queued_need_nonce:
            log.warning(
                "signatures may be valid for %g s (+%g s skew each side), longer than "
                "IMM_IN's duplicate window: queued inputs' nonces are stored too",
                self.max_lifetime,
                self.skew,
            )

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._watch

    def registry(self, tenant: str) -> KeyRegistry:
        """``tenant``'s registry as this hub knows it now."""
        return self._registries.get(tenant, _EMPTY)

    def required(self, tenant: str) -> bool:
        return self.require or (self.secure and bool(self._registries.get(tenant, _EMPTY).keys))

    async def check(
        self,
        msg: Any,
        tenant: str,
        kind: str,
        sender: str,
        who: Callable[[str], Awaitable[Mapping[str, Any]]],
    ) -> SignedBy | None:
        """Who signed ``msg`` (None: unsigned, and allowed); raises
        :class:`SignatureRefused` after recording the refusal."""
        try:
            return await self._check(msg, tenant, kind, sender, who)
        except SignatureError as exc:
            await self.refuse(tenant, msg.subject, exc)
            raise SignatureRefused(exc) from None

    def now(self) -> float:
        return self._clock()

    async def settle_nonce(self, tenant: str, subject: str, params: SignatureParams) -> None:
        """Create the nonce of an input by request; a replay is refused and audited."""
        try:
            await self._remember_nonce(tenant, params, "rpc")
        except SignatureError as exc:
            await self.refuse(tenant, subject, exc)
            raise SignatureRefused(exc) from None

    async def _check(
        self,
        msg: Any,
        tenant: str,
        kind: str,
        sender: str,
        who: Callable[[str], Awaitable[Mapping[str, Any]]],
    ) -> SignedBy | None:
        found = parse_signature(msg.headers)
        if found is None:
            if kind in _UNSIGNED_OK or sender == HUB_PID or not self.required(tenant):
                return None
            raise SignatureError(
                SignatureRefusal.UNSIGNED, f"tenant {tenant!r} requires signed inputs"
            )
        params, signature = found
        queued = msg.subject.split(".", 2)[1] == "in"
        at = self._stored_at(msg) if queued else self._clock()
        # Judged at the time it was stored: a key retired while a signed input waited in
        # IMM_IN still vouches for it (the server's timestamp cannot be forged).
        key = await self._key(tenant, params.key_id, at)
        self._check_window(params, at)
        headers = msg.headers or {}
        if "Nats-Msg-Id" in headers and "nats-msg-id" not in params.covered:
            raise SignatureError(
                SignatureRefusal.UNCOVERED, "Nats-Msg-Id is not covered", params.key_id
            )
        if params.alg == SESSION_ALG:
            good = await self._check_mac(msg, tenant, kind, queued, params, signature)
        else:
            good = verify_signature(
                self._verify_key(key), msg.subject, msg.data, headers, params, signature
            )
        if not good:
            raise SignatureError(
                SignatureRefusal.BAD_SIGNATURE,
                f"signature by key id {params.key_id!r} does not match this input (its body, "
                "subject or a covered header was altered, or another key signed it)",
                params.key_id,
            )
        if self.secure and (key.subject or key.role):
            await self._check_owner(key, sender, who)
        self.verified += 1
        if not queued and kind in RECORDED:
            nonce = RunNonce(self, tenant, msg.subject, params)
            return SignedBy(key.key_id, key.subject, recorded=nonce)
        if not queued and kind in self.overlapped:  # created after the answer (OVERLAPPED)
            nonce = RunNonce(self, tenant, msg.subject, params)
            return SignedBy(key.key_id, key.subject, later=nonce)
        # Queued, the stream's dedupe on the signed Nats-Msg-Id refuses a copy; without
        # that header covered, only the nonce can.
        if not queued or self.queued_need_nonce or "nats-msg-id" not in params.covered:
            await self._remember_nonce(tenant, params, "rpc" if not queued else _seq(msg))
        return SignedBy(key.key_id, key.subject)

    async def _check_mac(
        self,
        msg: Any,
        tenant: str,
        kind: str,
        queued: bool,
        params: SignatureParams,
        tag: bytes,
    ) -> bool:
        """Whether ``tag`` is the MAC of this input under its session (``_sessions``)."""
        kid = params.key_id
        if queued or kind == SESSION_KIND:
            # A queued input may be checked after its session ended; a session is opened
            # by the key itself.
            what = "an input queued in IMM_IN" if queued else "a session handshake"
            raise SignatureError(
                SignatureRefusal.MALFORMED, f"{what} is signed with {ALG_NAME}, not a MAC", kid
            )
        assert params.session is not None  # parse_signature requires it with the alg
        session = await self.sessions.get(tenant, params.session)
        if session is None or session.key_id != kid:  # (get: None once it has ended)
            raise SignatureError(
                SignatureRefusal.UNKNOWN_SESSION,
                f"session {params.session} of key id {kid!r} is unknown here or has ended",
                kid,
            )
        base = mac_base(msg.subject, msg.data, msg.headers or {}, params)
        self.maced += 1
        return hmac.compare_digest(session.mac(base), tag)

    async def open_session(
        self, msg: Any, tenant: str, sender: str, who: Callable[[str], Awaitable[Mapping[str, Any]]]
    ) -> bytes:
        """The answer to a session handshake (``_sessions``): ``ok:`` and the sealed key,
        or a refusal (recorded in ``IMM_AUDIT`` as any signature's)."""
        try:
            signed = await self.check(msg, tenant, SESSION_KIND, sender, who)
            if signed is None:
                error = SignatureError(
                    SignatureRefusal.UNSIGNED, "a session handshake must be signed"
                )
                await self.refuse(tenant, msg.subject, error)
                raise SignatureRefused(error)
            try:
                x25519 = bytes(msgpack.unpackb(msg.data)["x25519"])
            except Exception as exc:
                error = SignatureError(
                    SignatureRefusal.MALFORMED, f"unreadable handshake: {type(exc).__name__}"
                )
                await self.refuse(tenant, msg.subject, error)
                raise SignatureRefused(error) from None
            session_id, answer = await self.sessions.open(tenant, signed.key_id, x25519)
        except (SignatureRefused, ValueError) as exc:
            return b"rejected: " + str(exc).encode()
        except Exception as exc:  # the store or the audit: the signer tries again later
            log.warning("signing session on %s not opened: %r", msg.subject, exc)
            return b"retry"
        record = AuditRecord(
            action="session",
            decision="allow",
            reason="signature",
            message=f"signing session opened for key id {signed.key_id!r}",
            where={"subject": msg.subject, "key_id": signed.key_id, "session": session_id},
            by=self.hub_id,
        )
        await publish_audit(self.nc, self.names, tenant, record)
        return b"ok:" + answer

    async def _key(self, tenant: str, key_id: str, now: float) -> RegisteredKey:
        try:
            return self._registries.get(tenant, _EMPTY).lookup(key_id, now)
        except SignatureError as exc:
            if exc.refusal != SignatureRefusal.UNKNOWN_KEY or not await self._read_again(tenant):
                raise
        return self._registries.get(tenant, _EMPTY).lookup(key_id, now)

    async def _read_again(self, tenant: str) -> bool:
        """Read ``tenant``'s registry now (a key added this instant, before the watch
        told us); at most once a second per tenant, so unknown key ids cost little."""
        now = time.monotonic()
        if now - self._reread.get(tenant, 0.0) < _REREAD_S or self._policy is None:
            return False
        self._reread[tenant] = now
        try:
            entry = await self._policy.get(registry_key(tenant))
        except (KeyNotFoundError, JsNotFound):
            return False
        self._store(entry)
        return True

    def _check_window(self, params: SignatureParams, at: float) -> None:
        kid = params.key_id
        if params.expires - params.created > self.max_lifetime:
            raise SignatureError(
                SignatureRefusal.TOO_LONG,
                f"signature valid for {params.expires - params.created} s, more than the "
                f"{self.max_lifetime:g} s accepted",
                kid,
            )
        if at < params.created - self.skew:
            raise SignatureError(
                SignatureRefusal.FROM_THE_FUTURE,
                f"signature created {params.created - at:.0f} s in the future",
                kid,
            )
        if at > params.expires + self.skew:
            raise SignatureError(
                SignatureRefusal.EXPIRED,
                f"signature by key id {kid!r} expired {at - params.expires:.0f} s ago",
                kid,
            )

    async def _check_owner(
        self, key: RegisteredKey, sender: str, who: Callable[[str], Awaitable[Mapping[str, Any]]]
    ) -> None:
        principal = await who(sender)
        subject, roles = principal.get("subject"), principal.get("roles") or []
        if (key.subject and subject != key.subject) or (key.role and key.role not in roles):
            owner = " ".join(
                f"{k}={v!r}" for k, v in (("subject", key.subject), ("role", key.role)) if v
            )
            raise SignatureError(
                SignatureRefusal.WRONG_OWNER,
                f"key id {key.key_id!r} belongs to {owner}, not to sender {subject!r}",
                key.key_id,
            )

    async def _remember_nonce(self, tenant: str, params: SignatureParams, where: str) -> None:
        """First writer wins, across every hub; a queued input delivered again (same
        stream sequence) is not a replay."""
        assert self._nonces is not None, "not started"
        key = f"{tenant}.{params.nonce}"
        # A create is a publish expecting no message on the key yet; timer-free (_requests),
        # as this is one per input by request.
        headers = {"Nats-Expected-Last-Subject-Sequence": "0"}
        try:
            await Requests.of(self.nc).publish(self._nonce_prefix + key, where.encode(), headers)
            self.nonces_written += 1
            return
        except Exception as exc:
            if not is_wrong_last_sequence(exc):
                raise
        if where != "rpc":
            with contextlib.suppress(KeyNotFoundError, JsNotFound):
                entry = await self._nonces.get(key)
                if entry.value == where.encode():
                    return
        raise _replay(params)

    def _verify_key(self, key: RegisteredKey) -> VerifyKey:
        found = self._verify_keys.get(key.public_key)
        if found is None:
            found = self._verify_keys[key.public_key] = VerifyKey(public_key_bytes(key.public_key))
        return found

    def _stored_at(self, msg: Any) -> float:
        try:
            return float(msg.metadata.timestamp.timestamp())
        except Exception:  # not a JetStream delivery after all: judge on our clock
            return self._clock()

    async def refuse(self, tenant: str, subject: str, error: SignatureError) -> None:
        self.refused += 1
        log.warning("refused input on %s: %s (%s)", subject, error, error.refusal)
        await publish_refusal(
            self.nc,
            self.names,
            tenant,
            action="input",
            reason="signature",
            message=f"{error.refusal}: {error}",
            subject=subject,
            by=self.hub_id,
            key_id=error.key_id,
            check=str(error.refusal),
        )

    def _store(self, entry: Any) -> None:
        tenant = entry.key.rsplit(".", 1)[0]
        if entry.operation in ("DEL", "PURGE") or not entry.value:
            self._registries.pop(tenant, None)
            return
        try:
            self._registries[tenant] = KeyRegistry.from_bytes(entry.value)
        except ValueError as exc:
            # Keep the last good one: a broken write must not open the door nor shut it.
            log.error("tenant %s: key registry not applied: %s", tenant, exc)

    async def _load(self) -> Any:
        """Every tenant's registry as stored now; the watcher that follows the changes."""
        assert self._policy is not None
        watcher = await self._policy.watch("*.keys")
        while (entry := await watcher.updates(timeout=5.0)) is not None:  # type: ignore[no-untyped-call]
            self._store(entry)
        return watcher

    async def _follow(self, watcher: Any) -> None:
        while True:
            try:
                entry = await watcher.updates(timeout=5.0)
            except NatsTimeout:  # nothing changed
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the watch broke (an outage): load and watch again
                log.warning("key registry watch: %r; reading the registries again", exc)
                await asyncio.sleep(1.0)
                with contextlib.suppress(Exception):
                    await watcher.stop()
                try:
                    watcher = await self._load()
                except Exception as again:
                    log.warning("key registries not read (%r): keeping what is known", again)
                continue
            if entry is not None:
                self._store(entry)


_EMPTY = KeyRegistry()


def _replay(params: SignatureParams) -> SignatureError:
    return SignatureError(
        SignatureRefusal.REPLAY,
        f"replay: nonce of key id {params.key_id!r} already used",
        params.key_id,
    )


def _seq(msg: Any) -> str:
    try:
        return f"in:{msg.metadata.sequence.stream}"
    except Exception:
        return "in:?"
