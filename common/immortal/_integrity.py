"""History integrity: each transition carries the SHA-256 of the run's previous one.

A run's history subject is a hash chain. Deleting a message, altering one (in JetStream:
removing it and writing a changed copy), or reordering breaks a link, and the event ids,
contiguous from 1 across transitions, show a gap. The runs index keeps the digest of the
closing transition, which anchors a closed run's chain at its end.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from immortal._errors import PayloadError
from immortal._wire import Transition, decode

__all__ = ["IntegrityReport", "transition_digest", "verify_chain"]


def transition_digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


@dataclass
class IntegrityReport:
    """What ``verify`` found: ``ok`` when the chain is whole."""

    transitions: int = 0
    events: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_chain(messages: list[tuple[int, bytes]], head: bytes | None = None) -> IntegrityReport:
    """Check a run's history messages, given as (stream sequence, data) in stream order.

    ``head`` is the digest the runs index recorded for the run's closing transition, if
    any: the chain must reach it.
    """
    report = IntegrityReport()
    prev, next_id = b"", 1
    digests: set[bytes] = set()
    for seq, data in messages:
        report.transitions += 1
        try:
            transition = decode(Transition, data)
        except PayloadError as exc:
            report.problems.append(f"message {seq}: undecodable ({exc})")
            prev = transition_digest(data)
            continue
        if transition.prev != prev:
            what = "the first transition" if not prev else "the previous transition"
            report.problems.append(
                f"message {seq}: chain broken: it does not follow {what} "
                "(a message before it was deleted, altered or reordered)"
            )
        for event in transition.events:
            if event.id != next_id:
                report.problems.append(
                    f"message {seq}: event {event.id} where event {next_id} was expected "
                    f"({'missing events' if event.id > next_id else 'repeated events'})"
                )
            next_id = event.id + 1
            report.events += 1
        if transition.state.next_event_id != next_id:
            report.problems.append(
                f"message {seq}: its state says the next event is "
                f"{transition.state.next_event_id}, its events end at {next_id - 1}"
            )
        prev = transition_digest(data)
        digests.add(prev)
    if head and head not in digests:
        report.problems.append(
            "the runs index names a transition that is not in this history "
            "(the message it recorded was removed or altered)"
        )
    if not messages:
        report.problems.append("no history")
    return report
