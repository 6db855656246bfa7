"""The dead-letter subject: inputs a hub could not apply, kept with the reason.

Hubs publish them to ``imm.dlq.<tenant>.<queue>.<kind>`` in ``IMM_DLQ`` with headers
``Imm-Error`` (why), ``Imm-Subject`` (where the input was sent), ``Imm-Ref`` and ``Imm-Hub``.
``client.dead_letters`` lists them and re-drives them: the input goes back, durably, to its
tenant queue's input subject in ``IMM_IN`` (once the cause is fixed, e.g. the run it names
now exists), and leaves the dead-letter stream.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, get_args

from immortal._errors import ImmortalError
from immortal._jetstream import StoredMsg, read_subject
from immortal._names import InputKind, decode_token
from immortal.security.client_side import refuse_unscopable
from immortal.security.signing import signed_headers

if TYPE_CHECKING:
    from immortal._client import Client

__all__ = ["DeadLetter", "DeadLetters"]

_INPUT_KINDS = frozenset(get_args(InputKind))


@dataclass(frozen=True)
class DeadLetter:
    seq: int  # its sequence in IMM_DLQ: what redrive() and drop() take
    queue: str
    kind: str
    error: str
    sent_to: str  # the subject the input was first sent to
    hub: str
    data: bytes

    @property
    def redrivable(self) -> bool:
        return self.kind in _INPUT_KINDS


class DeadLetters:
    """``client.dead_letters``: this tenant's dead letters."""

    def __init__(self, client: Client) -> None:
        self._client = client

    async def list(self) -> list[DeadLetter]:
        c = self._client
        subject = f"{c.names.prefix}.dlq.{c.tenant}.>"
        return [_letter(msg) async for msg in read_subject(c.nc, c.names.stream_dlq, subject)]

    async def redrive(self, seq: int) -> None:
        """Send dead letter ``seq`` back to its queue's input subject, then drop it."""
        self._deletes()
        letter = await self._get(seq)
        if not letter.redrivable:
            raise ImmortalError(f"dead letter {seq} has no input kind to re-drive ({letter.kind})")
        c = self._client
        stamp = datetime.now(UTC).isoformat()
        subject = c.names.input_subject(c.tenant, letter.queue, letter.kind)  # type: ignore[arg-type]
        headers = {"Nats-Msg-Id": f"redrive:{seq}", "Imm-Redriven": stamp}
        # Re-driven by this client, so signed by it (the original signature, if any, has
        # expired by now and covered another subject).
        await c.nc.jetstream().publish(
            subject, letter.data, headers=signed_headers(c.nc, subject, letter.data, headers)
        )
        await c.nc.jetstream().delete_msg(c.names.stream_dlq, seq)

    async def drop(self, seq: int) -> None:
        self._deletes()
        await self._get(seq)  # only this tenant's
        c = self._client
        await c.nc.jetstream().delete_msg(c.names.stream_dlq, seq)

    def _deletes(self) -> None:
        refuse_unscopable(self._client.nc, "deleting a dead letter takes a stream message delete")

    async def _get(self, seq: int) -> DeadLetter:
        # The first of this tenant's dead letters from ``seq`` on: a read scoped to the
        # tenant's subjects (a read by sequence alone could return another tenant's).
        c = self._client
        subject = f"{c.names.prefix}.dlq.{c.tenant}.>"
        async with contextlib.aclosing(
            read_subject(c.nc, c.names.stream_dlq, subject, from_seq=seq)
        ) as messages:
            async for msg in messages:
                if msg.seq == seq:
                    return _letter(msg)
                break
        raise ImmortalError(f"no dead letter {seq} for tenant {c.tenant!r}")


def _letter(msg: StoredMsg) -> DeadLetter:
    _, _, _, queue_token, kind_token = msg.subject.split(".", 4)
    return DeadLetter(
        seq=msg.seq,
        queue=decode_token(queue_token),
        kind=decode_token(kind_token),
        error=msg.headers.get("Imm-Error", ""),
        sent_to=msg.headers.get("Imm-Subject", ""),
        hub=msg.headers.get("Imm-Hub", ""),
        data=msg.data,
    )
