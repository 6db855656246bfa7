"""Inputs by request-reply (``imm.rpc.>``): the fast path, where a hub applies an input
and answers its sender at once, which then skips the durable ``IMM_IN`` path. A mixin of
``Hub`` (``_hub.py``), for the hub's admission, guard, policy and apply."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

from nats.aio.msg import Msg

from immortal._errors import PayloadError
from immortal._inputs import BUSY, OK, REJECTED, STALE
from immortal._wire import encode
from immortal.security.sessions import SESSION_KIND
from immortal.security.signing import SignatureRefusal
from immortal_hub._applying import RunApplier
from immortal_hub._signatures import RunNonce, SignatureRefused
from immortal_hub._transitions import AwaitingStart, InvalidInput, StaleAttempt

if TYPE_CHECKING:
    from immortal_hub._guard import InputGuard
    from immortal_hub._limits import Admission
    from immortal_hub._metrics import HubMetrics
    from immortal_hub.policy import PolicyGate

__all__ = ["RpcInputs"]

log = logging.getLogger(__name__)


class RpcInputs(RunApplier):
    _running: bool
    refused: Counter[str]
    admission: Admission
    _metrics: HubMetrics
    _rpc_tasks: set[asyncio.Task[None]]
    _guard: InputGuard
    policy: PolicyGate

    # The hub's own (``Hub``): keep a dead letter.
    _keep_dead_letter: Callable[..., Awaitable[None]]

    async def _on_rpc(self, msg: Msg) -> None:
        """An input by request-reply: apply it, then reply; past its limits, ``busy``.

        A busy reply makes the sender queue the input durably in the tenant's ``IMM_IN``
        subjects, where this tenant's pullers take it as its limits allow. Results may enter
        ahead of the tenant's queued inputs, starts may not. Heartbeats are admitted past
        the limits: held back, they would time out attempts that are fine.
        """
        parts = msg.subject.split(".")
        if len(parts) == 6 and parts[4] == SESSION_KIND and self._running:
            self._spawn_rpc(self._guard.open_session(msg))  # rare: past the tenant's limits
            return
        tenant = parts[2] if len(parts) in (5, 6) and parts[4] != "heartbeat" else None
        if not self._running or (
            tenant is not None and not self.admission.try_enter(tenant, ahead=parts[4] != "start")
        ):
            if tenant is not None:
                self.refused[tenant] += 1
                self._metrics.refused.add(1, {"tenant": tenant})
            with contextlib.suppress(Exception):
                await msg.respond(BUSY)
            return
        self._spawn_rpc(self._serve_rpc(msg, tenant))

    def _spawn_rpc(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._rpc_tasks.add(task)
        task.add_done_callback(self._rpc_tasks.discard)

    async def _serve_rpc(self, msg: Msg, entered: str | None) -> None:
        if entered is None:
            await self._apply_rpc(msg)
            return
        await self.admission.start(entered)  # a slot, in turn with other tenants
        try:
            await self._apply_rpc(msg)
        finally:
            self.admission.release(entered)

    async def _decide_and_apply(
        self,
        tenant: str,
        queue: str,
        kind: str,
        body: Any,
        later: RunNonce | None,
        recorded: RunNonce | None,
    ) -> bytes:
        if recorded is not None and kind == "start" and self.policy.watch.get(tenant) is not None:
            # A start the policy refused once may be allowed by a later version: no run
            # records its nonce then, and its copy must not start the run, so under a
            # policy the nonce is created first. The run is still searched for it: its
            # original may have started the run before the tenant had a policy.
            recorded = await recorded.create()
        denied = await self.policy.refuses(tenant, queue, kind, body)
        if denied:
            return denied
        applied = await self._apply(tenant, queue, kind, body, nonce=recorded)
        if applied is not None and (kind in ("wft", "started") or getattr(body, "then", None)):
            # wft, run ahead: the worker's cache skips a read; started: whether the attempt
            # was lost
            return OK + b":" + encode(applied)
        return OK

    async def _apply_rpc(self, msg: Msg) -> None:
        reply = OK
        later: RunNonce | None = None
        try:
            admitted = await self._guard.admit(msg, self._decode)
            if admitted is None:
                return
            later = admitted.later
            reply = await self._decide_and_apply(*admitted)
        except StaleAttempt as exc:
            reply = STALE + b" " + str(exc).encode()
        except AwaitingStart:
            reply = BUSY  # the sender queues it durably, behind the run's start
        except (PayloadError, ValueError, InvalidInput) as exc:
            reason = f"undecodable input: {exc}" if not isinstance(exc, InvalidInput) else str(exc)
            if not _resent(exc):
                await self._keep_dead_letter(
                    msg.subject, msg.data, reason, ref=f"rpc:{uuid.uuid4().hex}"
                )
            reply = REJECTED + b" " + reason.encode()
        except Exception as exc:
            log.warning(
                "rpc input %s failed (%r); the sender falls back to IMM_IN", msg.subject, exc
            )
            reply = b"retry"
        finally:
            if later is not None:
                # Its create is made after the answer and outside the tenant's slot: a
                # copy of this input changed nothing (see _signatures.OVERLAPPED), and
                # is audited (and dead-lettered, below) when the create finds its nonce.
                self._spawn_rpc(self._create_nonce(msg, later))
        if not self._guard.may_reply(msg):
            return  # applied, but the answer would go to a subject the sender chose
        with contextlib.suppress(Exception):
            await msg.respond(reply)

    async def _create_nonce(self, msg: Msg, later: RunNonce) -> None:
        try:
            await later.create()
        except SignatureRefused as exc:  # a replay: audited by the check already
            await self._keep_dead_letter(
                msg.subject, msg.data, str(exc), ref=f"rpc:{uuid.uuid4().hex}"
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the store: nothing was changed by the copy, if it was one
            log.warning("nonce of %s not stored: %r", msg.subject, exc)


def _resent(exc: Exception) -> bool:
    """Whether the sender sends this input again itself: a MAC under a session this hub
    does not know is signed with Ed25519 and sent again (``immortal._inputs``), so its
    refusal is audited but not kept as a dead letter a re-drive would apply twice."""
    return (
        isinstance(exc, SignatureRefused) and exc.error.refusal is SignatureRefusal.UNKNOWN_SESSION
    )
