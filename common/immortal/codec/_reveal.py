"""Reading tools' view: a run's events and log lines with their sealed parts opened.

What cannot be opened says so in place, per field, instead of failing the read:
``<encrypted (key k1)>`` without a key ring, ``<encrypted: key k2 not in ring>``, or
``<encrypted: refused (key k1)>`` for a ciphertext that does not belong where it is.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from immortal._logs import LogLine
from immortal._wire import EventType, HistoryEvent
from immortal.codec._aesgcm import PayloadCodec
from immortal.codec._binding import Binding
from immortal.codec._envelope import is_sealed, key_id_of
from immortal.codec._errors import CiphertextRefusedError, CodecError, KeyNotInRingError
from immortal.codec._fields import (
    CONTINUE_INPUT,
    FAILURE,
    LOG,
    RESULT,
    STATUS,
    activity_field,
    child_input_field,
    signal_field,
    start_binding,
)
from immortal.codec._sealing import open_failure, open_log, open_payload, placeholder

__all__ = ["reveal_events", "reveal_log", "unreadable"]

_ACTIVITY_PARTS = {
    EventType.ACTIVITY_COMPLETED: ("result", "result"),
    EventType.ACTIVITY_HEARTBEAT: ("details", "heartbeat"),
    EventType.ACTIVITY_ATTEMPT_FAILED: ("failure", "failure"),
    EventType.ACTIVITY_FAILED: ("failure", "failure"),
}
_OWN_FIELDS = {
    EventType.WORKFLOW_COMPLETED: ("result", RESULT),
    EventType.WORKFLOW_FAILED: ("failure", FAILURE),
    EventType.WORKFLOW_CONTINUED_AS_NEW: ("input", CONTINUE_INPUT),
    EventType.STATUS_SET: ("value", STATUS),
}


def unreadable(data: bytes, codec: PayloadCodec | None, exc: CodecError | None = None) -> str:
    """The text shown in place of a sealed value that did not open."""
    if codec is None or exc is None:
        return placeholder(data)
    if isinstance(exc, KeyNotInRingError):
        return f"<encrypted: key {exc.key_id} not in ring>"
    if isinstance(exc, CiphertextRefusedError):
        return f"<encrypted: refused, does not belong here (key {key_id_of(data) or '?'})>"
    return f"<encrypted: {exc}>"


def reveal_events(
    events: list[HistoryEvent],
    codec: PayloadCodec | None,
    tenant: str,
    workflow_id: str,
    run_id: str,
    *,
    seqs: dict[int, int] | None = None,
) -> list[HistoryEvent]:
    """Copies of ``events`` with each sealed payload opened (or its placeholder).

    ``seqs`` (ActivityScheduled id -> the command's seq, which names an activity's
    payloads) carries over from one call to the next when a run is read piecewise.
    """
    here = Binding(tenant, workflow_id, run_id, "")
    seqs = {} if seqs is None else seqs
    out = []
    for ev in events:
        if ev.type is EventType.ACTIVITY_SCHEDULED:
            seqs[ev.id] = int(ev.attrs.get("seq", 0))
        where = _where(ev, here, seqs)
        if where is None or not _has_sealed(ev.attrs.get(where[0])):
            out.append(ev)
            continue
        attr, binding = where
        attrs = dict(ev.attrs)
        attrs[attr] = _reveal(attrs[attr], codec, binding)
        out.append(ev.model_copy(update={"attrs": attrs}))
    return out


def reveal_log(line: LogLine, codec: PayloadCodec | None, tenant: str) -> LogLine:
    """``line`` with its message and fields opened (or the placeholder as its message)."""
    if line.sealed is None:
        return line
    binding = Binding(tenant, line.workflow_id, line.run_id, LOG)
    try:
        message, fields = open_log(codec, binding, line.sealed)
    except CodecError as exc:
        return dataclasses.replace(line, message=unreadable(line.sealed, codec, exc), sealed=None)
    return dataclasses.replace(line, message=message, fields=dict(fields), sealed=None)


def _where(
    ev: HistoryEvent, here: Binding, seqs: dict[int, int]
) -> tuple[str, Binding | None] | None:
    t, attrs = ev.type, ev.attrs
    if t is EventType.WORKFLOW_STARTED:
        return "input", start_binding(here.tenant, here.workflow_id, here.run_id, attrs)
    if t is EventType.WORKFLOW_SIGNALED:
        return "input", here.at(signal_field(str(attrs.get("name"))))
    if t is EventType.ACTIVITY_SCHEDULED:
        return "input", here.at(activity_field(int(attrs.get("seq", 0)), "input"))
    if t in _ACTIVITY_PARTS:
        attr, part = _ACTIVITY_PARTS[t]
        seq = seqs.get(ev.caused_by or 0)
        if seq is None:  # its ActivityScheduled was not read: the place is unknown
            return attr, None
        return attr, here.at(activity_field(seq, part))
    if t is EventType.CHILD_WORKFLOW_SCHEDULED:
        return "input", here.at(child_input_field(str(attrs.get("workflow_id"))))
    if t in (EventType.CHILD_WORKFLOW_COMPLETED, EventType.CHILD_WORKFLOW_FAILED):
        attr = "result" if t is EventType.CHILD_WORKFLOW_COMPLETED else "failure"
        child = Binding(here.tenant, str(attrs.get("workflow_id")), str(attrs.get("run_id")), "")
        return attr, child.at(RESULT if attr == "result" else FAILURE)
    if t in _OWN_FIELDS:
        attr, field = _OWN_FIELDS[t]
        return attr, here.at(field)
    return None


def _has_sealed(value: Any) -> bool:
    return is_sealed(value) or (isinstance(value, dict) and is_sealed(value.get("sealed")))


def _reveal(value: Any, codec: PayloadCodec | None, binding: Binding | None) -> Any:
    sealed = value if isinstance(value, bytes) else value["sealed"]
    if binding is None:
        text = placeholder(sealed)
        return text if isinstance(value, bytes) else {**value, "message": text}
    try:
        if isinstance(value, bytes):
            return open_payload(codec, binding, value)
        return open_failure(codec, binding, value)
    except CodecError as exc:
        text = unreadable(sealed, codec, exc)
        return text if isinstance(value, bytes) else {**value, "message": text}
