"""``immortal audit``: the tenant's decision log (``IMM_AUDIT``), from any point, live."""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

import typer

from immortal_hub.cli._common import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_SERVER,
    ConnectTimeout,
    Prefix,
    Server,
    Tenant,
    closing,
    with_client,
)

if TYPE_CHECKING:
    from immortal import Client
    from immortal.security.audit import AuditRecord

__all__ = ["audit"]

AUDIT_HEADER = (
    f"{'seq':>7} {'time (UTC)':<12} {'decision':<8} {'action':<18} {'principal':<14} reason"
)


def audit(
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="keep printing new records")
    ] = False,
    from_seq: Annotated[int, typer.Option("--from-seq", help="start at this stream sequence")] = 1,
    decision: Annotated[str | None, typer.Option(help="only allow or deny")] = None,
    principal: Annotated[
        str | None, typer.Option(help="only records of this subject (or pid)")
    ] = None,
    action: Annotated[str | None, typer.Option(help="only this action (workflow.start...)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object a line")] = False,
    server: Server = DEFAULT_SERVER,
    tenant: Tenant = "default",
    prefix: Prefix = "imm",
    connect_timeout: ConnectTimeout = DEFAULT_CONNECT_TIMEOUT,
) -> None:
    """Who did what, allowed or denied, and why: every policy decision and refusal of
    the tenant, in the order stored (allows arrive in batches, a fraction of a second late)."""
    if decision not in (None, "allow", "deny"):
        raise typer.BadParameter("--decision is allow or deny")

    async def show(client: Client) -> None:
        from immortal.security.audit import tail_audit

        printed = 0
        records = tail_audit(
            client.nc, client.names, client.tenant, from_seq=from_seq, follow=follow
        )
        async with closing(records):
            async for seq, record in records:
                if not _wanted(record, decision, principal, action):
                    continue
                if not printed and not as_json:
                    print(AUDIT_HEADER)
                printed += 1
                print(_json(seq, record) if as_json else _line(seq, record), flush=True)
        if not printed and not as_json:
            print(f"none: no audit records for tenant {client.tenant!r}")

    with contextlib.suppress(KeyboardInterrupt):
        with_client(server, tenant, prefix, connect_timeout, show)


def _wanted(
    r: AuditRecord, decision: str | None, principal: str | None, action: str | None
) -> bool:
    if decision is not None and r.decision != decision:
        return False
    if action is not None and r.action != action:
        return False
    if principal is not None:
        who = r.principal or r.claimed or {}
        return principal in (who.get("subject"), who.get("pid"), who.get("sub"))
    return True


def _line(seq: int, r: AuditRecord) -> str:
    stamp = datetime.fromtimestamp(r.ts, tz=UTC).strftime("%H:%M:%S.%f")[:-3]
    who = r.principal or r.claimed or {}
    subject = str(who.get("subject") or who.get("sub") or "?")
    on = " ".join(f"{k}={v}" for k, v in (r.resource or {}).items())
    return f"{seq:>7} {stamp:<12} {r.decision:<8} {r.action:<18} {subject:<14} {r.message}" + (
        f"  [{on}]" if on else ""
    )


def _json(seq: int, r: AuditRecord) -> str:
    return json.dumps({"seq": seq, **r.model_dump(exclude_none=True)}, default=str)
