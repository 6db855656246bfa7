"""What the hub checks about an input's origin before it applies it, when the broker
cannot: the broker stamps the sender (the input subject's last token) and keeps each
connection inside its tenant, but it also delivers JetStream's own answers (a direct
get's message, a publish ack) to whatever reply subject a client names, and fires a
scheduled message into whatever target its publisher named. So:

- an input that carries JetStream's answer headers (``Nats-Stream``...) is no one's
  input: a client named our input subject as the reply of its own read, to inject the
  message it read (another tenant's subject, or its own, under another sender). Refused.
- a fired timer whose schedule lives in another tenant's subjects (``Nats-Scheduler``) is
  refused: a worker of tenant A could otherwise arm a timer on its own subject aimed at
  tenant B's fired subject.
- a reply goes only to the sender's own inbox, never to a subject a client chose.

Refusals are kept in ``IMM_AUDIT`` under the tenant whose subject was used. The guard
also runs the hub's read relay (``_reads``), the other thing the hub checks for tenants.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from nats.js.errors import KeyNotFoundError
from nats.js.errors import NotFoundError as JsNotFound

from immortal._codec import unpack
from immortal._names import Names
from immortal.security import HUB_PID, inbox_prefix
from immortal.security.audit import publish_refusal
from immortal_hub._reads import ReadRelay
from immortal_hub._signatures import RunNonce, SignatureCheck

__all__ = ["ForeignSender", "InputGuard"]

log = logging.getLogger(__name__)

_JETSTREAM_ANSWER = ("Nats-Stream", "Nats-Sequence", "Nats-Subject", "Nats-Time-Stamp")
_IDENTIFIED = frozenset({"start", "signal", "cancel", "terminate"})
_FRESH_S = 60.0  # a principal record is read again after this long


class Admitted(NamedTuple):
    """An input the guard let through."""

    tenant: str
    queue: str
    kind: str
    body: Any
    later: RunNonce | None = None  # a signed input's nonce, created after the answer
    recorded: RunNonce | None = None  # or one its run records (``_signatures.RECORDED``)


class ForeignSender(ValueError):
    """The sender's principal belongs to another tenant than the subject it used."""


class InputGuard:
    def __init__(
        self,
        nc: Any,
        names: Names,
        *,
        secure: bool,
        hub_id: str,
        require_signatures: bool = False,
        duplicate_window: float = 120.0,
    ) -> None:
        self.nc = nc
        self.names = names
        self.secure = secure
        self.hub_id = hub_id
        self._principals: dict[str, tuple[float, dict[str, Any]]] = {}
        self._principals_kv: Any = None  # imm-principals, opened at the first lookup
        self._claims: dict[str, dict[str, Any]] = {}  # with groups and attributes (policies)
        self.refused = 0
        self.reads = ReadRelay(nc, names, hub_id)
        self.signatures = SignatureCheck(
            nc,
            names,
            hub_id=hub_id,
            secure=secure,
            require=require_signatures,
            duplicate_window=duplicate_window,
        )

    async def start(self) -> None:
        await self.signatures.start()  # every tenant's key registry, before any input
        await self.reads.start()
        if not self.secure:
            log.warning(
                "hub %s: auth is off: any process that reaches NATS may act for any tenant "
                "(run the auth service and give the hub a token to turn it on)",
                self.hub_id,
            )

    async def stop(self) -> None:
        await self.reads.stop()
        await self.signatures.stop()

    async def admit(self, msg: Any, decode: Callable[[str, bytes], Any]) -> Admitted | None:
        """The input's tenant, queue, kind and body, with the sender recorded in the body;
        None when it is no one's input (refused and audited). Raises ``ValueError`` (or
        the decoder's error) for an input that cannot be read, ``SignatureRefused`` for
        one whose signature is refused (audited). ``later``, ``recorded``: see
        ``SignedBy``."""
        tenant, queue, kind, sender = self.names.parse_input(msg.subject)
        forged = self.forged(msg.subject, msg.headers)
        if forged is not None:
            await self.refuse(tenant, msg.subject, forged)
            return None
        signed = await self.signatures.check(msg, tenant, kind, sender, self.who)
        later = signed.later if signed is not None else None
        recorded = signed.recorded if signed is not None else None
        body = decode(kind, msg.data)
        await self.identify(tenant, kind, sender, body)
        key_id = signed.key_id if signed is not None else None
        if hasattr(body, "key_id"):  # a result: beside its worker (never the payload's word)
            body.key_id = key_id
        elif key_id is not None and kind in _IDENTIFIED and hasattr(body, "by"):
            body.by = {**(body.by or {}), "key_id": key_id}  # beside who sent it
        return Admitted(tenant, queue, kind, body, later, recorded)

    async def open_session(self, msg: Any) -> None:
        """A signing session's handshake (``_sessions``): checked, answered to its sender
        only."""
        tenant, _, _, sender = self.names.parse_input(msg.subject)
        answer = await self.signatures.open_session(msg, tenant, sender, self.who)
        if self.may_reply(msg):
            with contextlib.suppress(Exception):
                await msg.respond(answer)

    def forged(self, subject: str, headers: dict[str, str] | None) -> str | None:
        """Why this input is not an input (None if it is one)."""
        if not headers:
            return None
        if any(h in headers for h in _JETSTREAM_ANSWER):
            return (
                f"input on {subject} is a message JetStream delivered to a reply subject a "
                f"client chose (from {headers.get('Nats-Stream')} {headers.get('Nats-Subject')})"
            )
        scheduler = headers.get("Nats-Scheduler")
        if scheduler is not None:
            fired_tenant = subject.split(".")[2] if subject.count(".") >= 2 else ""
            parts = scheduler.split(".")
            if len(parts) < 3 or parts[0] != self.names.prefix or parts[2] != fired_tenant:
                return f"timer fired into tenant {fired_tenant!r} from schedule {scheduler!r}"
        return None

    def may_reply(self, msg: Any) -> bool:
        reply: str | None = msg.reply
        if not reply:
            return False
        sender = self.names.parse_input(msg.subject)[3]
        if not self.secure or sender in ("", HUB_PID):
            return True
        return reply.startswith(inbox_prefix(sender) + ".")

    async def refuse(self, tenant: str, subject: str, reason: str) -> None:
        self.refused += 1
        log.warning("refused input on %s: %s", subject, reason)
        await publish_refusal(
            self.nc,
            self.names,
            tenant,
            action="input",
            reason="forged_origin",
            message=reason,
            subject=subject,
            by=self.hub_id,
        )

    async def identify(self, tenant: str, kind: str, sender: str, body: Any) -> None:
        """Record who sent a start, signal, cancel or terminate (``body.by``), from the
        broker-stamped sender; whatever the payload said is overwritten."""
        if kind not in _IDENTIFIED or not hasattr(body, "by"):
            return
        body.by = await self.who(sender) if self.secure or sender == HUB_PID else None
        if body.by is not None and body.by.get("tenant") not in (tenant, None, ""):
            if "hub" not in body.by.get("roles", []):
                raise ForeignSender(f"sender {sender} is of tenant {body.by.get('tenant')!r}")

    async def who(self, sender: str) -> dict[str, Any]:
        if sender in ("", HUB_PID):
            return {"subject": "hub", "kind": "service", "roles": ["hub"], "pid": HUB_PID}
        known = self._principals.get(sender)
        if known is not None and time.monotonic() - known[0] < _FRESH_S:
            return known[1]
        record: dict[str, Any] = {"pid": sender}
        try:
            if self._principals_kv is None:  # once: opening a bucket is a stream-info request
                bucket = self.names.bucket_principals
                self._principals_kv = await self.nc.jetstream().key_value(bucket)
            entry = await self._principals_kv.get(sender)
            raw = unpack(entry.value or b"")
            keep = ("subject", "tenant", "roles", "kind", "token_id", "issuer", "pid")
            record = {k: raw[k] for k in keep if raw.get(k) not in (None, "", [])}
            full = ("groups", "attributes", "queues")
            self._claims[sender] = {**record, **{k: raw[k] for k in full if raw.get(k)}}
        except (KeyNotFoundError, JsNotFound):
            log.warning("no principal record for sender %s: recording its id alone", sender)
        except Exception as exc:
            log.warning("principal %s not read (%s): recording its id alone", sender, exc)
            return record
        self._principals[sender] = (time.monotonic(), record)
        return record

    async def claims(self, sender: str) -> dict[str, Any]:
        """The sender's full record (:meth:`who` with its groups and attributes), for the
        tenant's policy."""
        record = await self.who(sender)
        return self._claims.get(sender, record)
