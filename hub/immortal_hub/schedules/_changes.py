"""Schedule changes by request: a client asks a hub on ``<p>.schedules.<tenant>.<sender>``
(a subject the broker lets only that sender publish, and only a writer or an admin); the
hub decides the change by the tenant's policy, then writes the definition and arms or
disarms its scheduled message, and answers.

Request-reply, as the read relay, rather than an input through ``IMM_IN``: a schedule is
no run (there is no history to append, nothing to order behind a start) and its caller
waits for the answer, so nothing needs keeping durably until a hub is free. A denied
change writes nothing; its sender gets ``denied:`` and the reason (``PolicyDeniedError``)
and the deny is in ``IMM_AUDIT``. With auth off there is no verified principal: changes
are made as asked, by the same code.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from nats.aio.msg import Msg

from immortal._errors import PayloadError
from immortal._inputs import OK, denied_reply
from immortal._names import Names
from immortal._schedules import SCHEDULE_ERROR, ScheduleChange, ScheduleSpec
from immortal._wire import decode, encode
from immortal.security import inbox_prefix
from immortal.security.audit import publish_refusal
from immortal_hub._signatures import SignatureCheck, SignatureRefused, SignedBy
from immortal_hub.policy import PolicyGate, schedule_author, schedule_refusal
from immortal_hub.schedules._store import (
    arm,
    delete_schedule,
    disarm,
    read_schedule,
    write_schedule,
)

__all__ = ["ScheduleChanges"]

log = logging.getLogger(__name__)

Claims = Callable[[str], Awaitable[Mapping[str, Any]]]  # sender pid -> its full record


class _Refused(Exception):
    """A change the hub cannot make (no such schedule, a malformed definition)."""


class ScheduleChanges:
    def __init__(
        self,
        nc: Any,
        names: Names,
        hub_id: str,
        *,
        policy: PolicyGate,
        claims: Claims,
        signatures: SignatureCheck | None = None,
    ) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.names = names
        self.hub_id = hub_id
        self.policy = policy
        self._claims = claims
        self.signatures = signatures  # checks a change's signature as an input's
        self._sub: Any = None
        self.made = 0  # for tests

    async def start(self) -> None:
        p = self.names.prefix
        self._sub = await self.nc.subscribe(
            f"{p}.schedules.*.*", queue=f"{p}-hubs", cb=self._on_change
        )

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()

    async def _on_change(self, msg: Msg) -> None:
        tenant, sender = msg.subject.split(".")[-2:]
        secure = self.policy.secure
        if secure and not (msg.reply or "").startswith(inbox_prefix(sender) + "."):
            await self._audit(tenant, msg.subject, f"reply {msg.reply!r} is not the sender's inbox")
            return  # answering would send the definition to a subject the sender chose
        try:
            signed = await self._signed_by(msg, tenant, sender)
            change = decode(ScheduleChange, msg.data)
            principal = dict(await self._claims(sender)) if secure else {}
            if secure and principal.get("tenant") != tenant:
                raise _Refused(f"sender {sender} is not a principal of tenant {tenant!r}")
            if signed is not None:  # beside the author, as history records it for a start
                principal["key_id"] = signed.key_id
            reply = await self._make(tenant, change, principal)
        except (_Refused, PayloadError, SignatureRefused) as exc:
            reply = SCHEDULE_ERROR + str(exc).encode()
        except Exception as exc:
            log.warning("schedule change on %s failed: %r", msg.subject, exc)
            reply = SCHEDULE_ERROR + f"the hub failed to make the change: {exc!r}".encode()
        with contextlib.suppress(Exception):
            await msg.respond(reply)

    async def _signed_by(self, msg: Msg, tenant: str, sender: str) -> SignedBy | None:
        """A change is checked as an input is (``_signatures``: key, window, signature,
        owner, a nonce seen once by any hub); unsigned is refused where the tenant
        requires signatures. Raises ``SignatureRefused`` (audited)."""
        if self.signatures is None:
            return None
        return await self.signatures.check(msg, tenant, "schedule", sender, self._claims)

    async def _make(self, tenant: str, change: ScheduleChange, principal: dict[str, Any]) -> bytes:
        """Decide the change, then make it; the reply for its sender."""
        if change.op == "create":
            spec = _new_definition(change, principal)
            replaced = await read_schedule(self.js, self.names, tenant, change.schedule_id)
            if replaced is not None:
                # A replace removes the schedule there was: the right to delete it, too.
                denied = schedule_refusal(self.policy, tenant, principal, "delete", replaced)
                if denied is not None:
                    return denied_reply(denied.reason, denied.rule_ids, denied.policy_version)
        else:
            found = await read_schedule(self.js, self.names, tenant, change.schedule_id)
            if found is None:
                raise _Refused(f"no schedule {change.schedule_id!r}")
            spec = found
        denied = schedule_refusal(self.policy, tenant, principal, change.op, spec)
        if denied is not None:
            return denied_reply(denied.reason, denied.rule_ids, denied.policy_version)
        js, names = self.js, self.names
        if change.op == "delete":
            await disarm(js, names, tenant, spec.schedule_id)
            await delete_schedule(js, names, tenant, spec.schedule_id)
        else:
            spec.paused = change.op == "pause"
            await write_schedule(js, names, tenant, spec)
            if spec.paused:
                await disarm(js, names, tenant, spec.schedule_id)
            else:
                await arm(js, names, tenant, spec)
        self.made += 1
        log.info("schedule %s/%s: %s", tenant, spec.schedule_id, change.op)
        return OK + b":" + encode(spec)

    async def _audit(self, tenant: str, subject: str, reason: str) -> None:
        log.warning("schedule change refused on %s: %s", subject, reason)
        await publish_refusal(
            self.nc,
            self.names,
            tenant,
            action="schedule",
            reason="forged_origin",
            message=reason,
            subject=subject,
            by=self.hub_id,
        )


def _new_definition(change: ScheduleChange, principal: dict[str, Any]) -> ScheduleSpec:
    spec = change.spec
    if spec is None or spec.schedule_id != change.schedule_id:
        raise _Refused(f"create of schedule {change.schedule_id!r} carries no definition of it")
    if (spec.every is None) == (spec.cron is None):
        raise _Refused(f"schedule {change.schedule_id!r} needs exactly one of every or cron")
    spec.paused = False
    # Never the sender's word: the verified claims of whoever asked (none with auth off).
    spec.principal = schedule_author(principal)
    return spec
