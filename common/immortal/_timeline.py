"""A run's history for people and for files: a timeline grouped by step, and a lossless
JSON export that a replayer (``immortal-worker replay``) reads back.

>>> events = await handle.history()
>>> print(immortal.format_timeline(events))
>>> Path("order-42.json").write_text(immortal.history_to_json(events))
>>> assert immortal.history_from_json(Path("order-42.json").read_text()) == events
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from immortal._codec import unpack
from immortal._errors import PayloadError
from immortal._wire import CLOSING_EVENTS, EventType, HistoryEvent

__all__ = [
    "HistoryExport",
    "event_to_json",
    "format_timeline",
    "history_from_json",
    "history_to_json",
    "load_history",
]

FORMAT = "immortal-history/1"


def history_to_json(
    events: Sequence[HistoryEvent],
    *,
    workflow_id: str | None = None,
    run_id: str | None = None,
    tenant: str | None = None,
) -> str:
    """Export ``events`` as JSON that :func:`history_from_json` turns back into equal events.

    Payloads are msgpack ``bytes`` inside the attributes; they are written as
    ``{"$bytes": "<base64>"}``. The ids, when given, let a replay see the run's own
    ``workflow_id`` and ``run_id`` (``ctx.random()`` is seeded by them).
    """
    doc: dict[str, Any] = {"format": FORMAT}
    for key, value in (("workflow_id", workflow_id), ("run_id", run_id), ("tenant", tenant)):
        if value is not None:
            doc[key] = value
    doc["events"] = [_tag(_event_dict(e)) for e in events]
    return json.dumps(doc, indent=1, ensure_ascii=False)


def event_to_json(event: HistoryEvent) -> dict[str, Any]:
    """One event as :func:`history_to_json` writes it (payload bytes as ``$bytes``)."""
    return dict(_tag(_event_dict(event)))


def history_from_json(text: str) -> list[HistoryEvent]:
    """The events of a :func:`history_to_json` export (or of a bare JSON list of events)."""
    return load_history(text).events


@dataclass(frozen=True)
class HistoryExport:
    """A history read from JSON, with the run it came from when the export names it."""

    events: list[HistoryEvent]
    workflow_id: str | None = None
    run_id: str | None = None
    tenant: str | None = None


def load_history(text: str) -> HistoryExport:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PayloadError(f"history is not JSON: {exc}") from exc
    if isinstance(doc, list):
        doc = {"events": doc}
    if not isinstance(doc, dict) or not isinstance(doc.get("events"), list):
        raise PayloadError("not an Immortal history export (no list of events)")
    if doc.get("format", FORMAT) != FORMAT:
        raise PayloadError(f"unknown history format {doc['format']!r} (this reads {FORMAT})")
    try:
        events = [HistoryEvent.model_validate(_untag(raw)) for raw in doc["events"]]
    except ValueError as exc:  # pydantic's ValidationError, binascii.Error
        raise PayloadError(f"malformed history event: {exc}") from exc
    ids = {k: str(doc[k]) for k in ("workflow_id", "run_id", "tenant") if doc.get(k) is not None}
    return HistoryExport(events, **ids)


def format_timeline(
    events: Sequence[HistoryEvent], *, notes: Mapping[int, Sequence[str]] | None = None
) -> str:
    """The history as people read it: one line per step in the order the steps began, what
    happened to each step nested under it (an activity's attempts, a sleep's firing, a
    child's outcome), each line with its time since the start and its event id.
    Workflow-task bookkeeping is left out, except a task that failed.

    ``notes`` are lines to print under the line of an event id (``immortal logs
    --with-history`` puts each log line there); those of ids not shown come last.
    """
    if not events:
        return "(no events)\n"
    return "\n".join(_Timeline(list(events), notes).lines()) + "\n"


# -- JSON tagging ------------------------------------------------------------------------

_BYTES, _MAP = "$bytes", "$map"


def _event_dict(e: HistoryEvent) -> dict[str, Any]:
    return {
        "id": e.id,
        "type": e.type.value,
        "ts": e.ts,
        "caused_by": e.caused_by,
        "attrs": e.attrs,
    }


def _tag(value: Any) -> Any:
    """A JSON-ready form of a msgpack-decoded value; :func:`_untag` inverts it exactly."""
    if isinstance(value, bytes | bytearray):
        return {_BYTES: base64.b64encode(value).decode("ascii")}
    if isinstance(value, dict):
        plain = all(isinstance(k, str) for k in value)
        if plain and not (len(value) == 1 and next(iter(value)) in (_BYTES, _MAP)):
            return {k: _tag(v) for k, v in value.items()}
        # Non-string keys, or a dict that would read back as a tag: keep it as pairs.
        return {_MAP: [[_tag(k), _tag(v)] for k, v in value.items()]}
    if isinstance(value, list | tuple):
        return [_tag(v) for v in value]
    return value


def _untag(value: Any) -> Any:
    if isinstance(value, dict):
        if len(value) == 1:
            ((key, inner),) = value.items()
            if key == _BYTES and isinstance(inner, str):
                return base64.b64decode(inner, validate=True)
            if key == _MAP and isinstance(inner, list):
                return {_untag(k): _untag(v) for k, v in inner}
        return {k: _untag(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_untag(v) for v in value]
    return value


# -- the timeline ------------------------------------------------------------------------

# Events that open a step; later events that concern it are nested under it.
_STEPS = frozenset(
    {EventType.ACTIVITY_SCHEDULED, EventType.TIMER_STARTED, EventType.CHILD_WORKFLOW_SCHEDULED}
)
_HIDDEN = frozenset({EventType.WORKFLOW_TASK_SCHEDULED, EventType.WORKFLOW_TASK_COMPLETED})
# Events that end an attempt (their line summarises its heartbeats).
_OUTCOMES = frozenset(
    {
        EventType.ACTIVITY_ATTEMPT_FAILED,
        EventType.ACTIVITY_COMPLETED,
        EventType.ACTIVITY_FAILED,
        EventType.ACTIVITY_RESULT_IGNORED,
    }
)
# Events that name their step in an attribute rather than in ``caused_by``.
_OWNER_ATTR = {EventType.ACTIVITY_CANCELED: "activity", EventType.TIMER_CANCELED: "timer"}
_WIDTH = 80  # payloads are cut to about this many characters


@dataclass
class _Step:
    opener: HistoryEvent
    children: list[HistoryEvent] = field(default_factory=list)


class _Timeline:
    def __init__(
        self, events: list[HistoryEvent], notes: Mapping[int, Sequence[str]] | None = None
    ) -> None:
        self.events = events
        self.notes = _under_shown(events, notes or {})
        started = next((e for e in events if e.type is EventType.WORKFLOW_STARTED), events[0])
        self.t0 = started.ts
        self.queue = started.attrs.get("queue")
        self.closed = any(e.type in CLOSING_EVENTS for e in events)
        self.steps: dict[int, _Step] = {}
        self.top: list[HistoryEvent] = []
        for e in events:
            if e.type in _HIDDEN:
                continue
            if e.type in _STEPS:
                self.steps[e.id] = _Step(e)
                self.top.append(e)
                continue
            attr = _OWNER_ATTR.get(e.type)
            owner = e.attrs.get(attr) if attr else e.caused_by
            if isinstance(owner, int) and owner in self.steps:
                self.steps[owner].children.append(e)
            else:
                self.top.append(e)

    def lines(self) -> list[str]:
        out: list[str] = []
        for e in self.top:
            step = self.steps.get(e.id)
            if step is None:
                out.append(self._line(e, _top_text(e, self.t0)))
            elif e.type is EventType.ACTIVITY_SCHEDULED:
                out.extend(self._activity(step))
            elif e.type is EventType.TIMER_STARTED:
                out.extend(self._timer(step))
            else:
                out.extend(self._child(step))
        for event_id in sorted(self.notes):  # of events the timeline leaves out
            out.append(self._line(None, f"(event #{event_id})") + self._notes(event_id, 0))
        return out

    def _line(self, e: HistoryEvent | None, text: str, depth: int = 0) -> str:
        when = _offset(e.ts - self.t0) if e is not None else ""
        ref = f"#{e.id}" if e is not None else ""
        line = f"{when:>10} {ref:>5}  {'  ' * depth}{text}"
        return line + self._notes(e.id, depth) if e is not None else line

    def _notes(self, event_id: int, depth: int) -> str:
        pad = " " * 18 + "  " * (depth + 1)
        return "".join(f"\n{pad}{note}" for note in self.notes.pop(event_id, []))

    def _activity(self, step: _Step) -> list[str]:
        e = step.opener
        head = f"activity {e.attrs.get('name')}({_args(e.attrs.get('input'))})"
        if e.attrs.get("queue") not in (None, self.queue):
            head += f"  on queue {e.attrs['queue']}"
        out = [self._line(e, head)]
        beats: dict[int, list[HistoryEvent]] = {}  # by attempt, until its outcome shows them
        closer: HistoryEvent | None = None
        for c in step.children:
            attempt = int(c.attrs.get("attempt") or 0)
            if c.type is EventType.ACTIVITY_HEARTBEAT:
                beats.setdefault(attempt, []).append(c)
                continue
            if c.type in (EventType.ACTIVITY_COMPLETED, EventType.ACTIVITY_FAILED):
                closer = c
            if c.type is EventType.ACTIVITY_CANCELED:
                closer = c
                out.extend(self._running(beats))  # what was running when it was cancelled
            mine = beats.pop(attempt, []) if c.type in _OUTCOMES else []
            for n, text in enumerate(_activity_texts(c, mine, self.t0)):
                out.append(self._line(c if n == 0 else None, text, 1))
        out.extend(self._running(beats))
        out.extend(self._activity_summary(e, closer))
        return out

    def _running(self, beats: dict[int, list[HistoryEvent]]) -> list[str]:
        """Attempts that heartbeat with no outcome recorded (yet)."""
        lines = [
            self._line(hbs[-1], f"attempt {attempt}{_ran({}, hbs)}  running{_beats(hbs)}", 1)
            for attempt, hbs in sorted(beats.items())
        ]
        beats.clear()
        return lines

    def _activity_summary(self, opener: HistoryEvent, closer: HistoryEvent | None) -> list[str]:
        if closer is None:
            return [] if self.closed else [self._line(None, "open", 1)]
        took = _duration(closer.ts - opener.ts)
        attempts = int(closer.attrs.get("attempt") or 1)
        tries = f"{attempts} attempt{'s' if attempts != 1 else ''}"
        if closer.type is EventType.ACTIVITY_COMPLETED:
            if attempts == 1:
                return []  # the attempt line said it all
            return [self._line(None, f"completed after {tries} in {took}", 1)]
        if closer.type is EventType.ACTIVITY_FAILED:
            reason = closer.attrs.get("reason") or "failed"
            return [self._line(None, f"failed for good ({reason}) after {tries} in {took}", 1)]
        return []

    def _timer(self, step: _Step) -> list[str]:
        e = step.opener
        cancelled = any(c.type is EventType.TIMER_CANCELED for c in step.children)
        what = "timer" if cancelled else "sleep"
        head = f"{what} {_duration(int(e.attrs.get('duration_ms') or 0))}"
        if isinstance(e.attrs.get("due"), int):
            head += f"  (due {_offset(e.attrs['due'] - self.t0)})"
        out = [self._line(e, head)]
        for c in step.children:
            if c.type is EventType.TIMER_FIRED:
                late = int(c.attrs.get("late_ms") or 0)
                text = f"fired after {_duration(c.ts - e.ts)}, {_duration(late)} late"
            elif c.type is EventType.TIMER_CANCELED:
                text = f"cancelled after {_duration(c.ts - e.ts)}"
            else:
                text = _top_text(c, self.t0)
            out.append(self._line(c, text, 1))
        if not step.children and not self.closed:
            out.append(self._line(None, "pending", 1))
        return out

    def _child(self, step: _Step) -> list[str]:
        e = step.opener
        a = e.attrs
        head = f"child {a.get('workflow_type')}({_args(a.get('input'))})  id {a.get('workflow_id')}"
        if a.get("queue") not in (None, self.queue):
            head += f"  on queue {a['queue']}"
        out = [self._line(e, head)]
        for c in step.children:
            took = _duration(c.ts - e.ts)
            if c.type is EventType.CHILD_WORKFLOW_COMPLETED:
                text = f"completed after {took}  ->  {_value(c.attrs.get('result'))}"
            elif c.type is EventType.CHILD_WORKFLOW_FAILED:
                status = c.attrs.get("status") or "failed"
                text = f"{status} after {took}  {_failure(c.attrs.get('failure'))}"
            else:
                text = _top_text(c, self.t0)
            out.append(self._line(c, text, 1))
        if not step.children and not self.closed:
            out.append(self._line(None, "running", 1))
        return out


def _under_shown(
    events: list[HistoryEvent], notes: Mapping[int, Sequence[str]]
) -> dict[int, list[str]]:
    """Notes of a left-out event (workflow-task bookkeeping) go under the shown event before
    it: workflow code logs against the last event it saw, often a task's scheduling."""
    shown: dict[int, int] = {}  # event id -> the id of the line its notes go under
    last = 0
    for e in events:
        if e.type not in _HIDDEN:
            last = e.id
        shown[e.id] = last or e.id
    out: dict[int, list[str]] = {}
    for event_id in sorted(notes):
        out.setdefault(shown.get(event_id, event_id), []).extend(notes[event_id])
    return out


def _activity_texts(e: HistoryEvent, beats: list[HistoryEvent], t0: int) -> list[str]:
    """The line(s) for one event under an activity."""
    a = e.attrs
    attempt = f"attempt {a.get('attempt', '?')}"
    if e.type is EventType.ACTIVITY_ATTEMPT_STARTED:
        return [f"{attempt}  started on {a.get('worker')}"]
    if e.type is EventType.ACTIVITY_ATTEMPT_SCHEDULED:
        late = int(a.get("late_ms") or 0)
        return [f"{attempt}  dispatched after its backoff, {_duration(late)} late"]
    if e.type is EventType.ACTIVITY_CANCELED:
        return ["cancelled by the workflow"]
    ran = _ran(a, beats) + _beats(beats)
    if e.type is EventType.ACTIVITY_COMPLETED:
        return [f"{attempt}{ran}  ->  {_value(a.get('result'))}"]
    if e.type is EventType.ACTIVITY_RESULT_IGNORED:
        return [f"{attempt}{ran}  result ignored: {a.get('reason')}"]
    if e.type in (EventType.ACTIVITY_ATTEMPT_FAILED, EventType.ACTIVITY_FAILED):
        texts = [f"{attempt}{ran}  failed  {_failure(a.get('failure'))}"]
        if e.type is EventType.ACTIVITY_ATTEMPT_FAILED:
            backoff = _duration(int(a.get("backoff_ms") or 0))
            due = a.get("retry_at")
            at = f", due {_offset(due - t0)}" if isinstance(due, int) else ""
            texts.append(f"  retry in {backoff} (attempt {a.get('next_attempt')}{at})")
        return texts
    return [_top_text(e, t0)]


def _ran(a: dict[str, Any], beats: list[HistoryEvent]) -> str:
    """Where and how long an attempt ran (a timeout the hub detected names neither; its
    heartbeats, if any, name the worker)."""
    worker = a.get("worker") or (beats[-1].attrs.get("worker") if beats else None)
    out = f"  on {worker}" if worker else ""
    if isinstance(a.get("started_ts"), int) and isinstance(a.get("ended_ts"), int):
        out += f"  ran {_duration(a['ended_ts'] - a['started_ts'])}"
    return out


def _beats(beats: list[HistoryEvent]) -> str:
    if not beats:
        return ""
    n = len(beats)
    last = beats[-1].attrs.get("details")
    details = f", last {_value(last)}" if last is not None else ""
    return f"  ({n} heartbeat{'s' if n != 1 else ''}{details})"


def _top_text(e: HistoryEvent, t0: int) -> str:  # noqa: C901 - one branch per event type
    a = e.attrs
    t = e.type
    if t is EventType.WORKFLOW_STARTED:
        text = f"started {a.get('workflow_type')}({_args(a.get('input'))})"
        text += f"  on queue {a.get('queue')}  at {_clock(e.ts)}"
        if a.get("continued_from"):
            text += f"  continuing run {a['continued_from']}"
        if isinstance(a.get("parent"), dict):
            text += f"  child of {a['parent'].get('workflow_id')}"
        return text + _by(a)
    if t is EventType.WORKFLOW_SIGNALED:
        return f"signal {a.get('name')}  {_value(a.get('input'))}" + _by(a)
    if t is EventType.WORKFLOW_CANCEL_REQUESTED:
        return "cancel requested" + (f": {a['reason']}" if a.get("reason") else "") + _by(a)
    if t is EventType.MARKER_RECORDED:
        return f"patch {a.get('patch')!r} marked"
    if t is EventType.STATUS_SET:
        return f"status  {_value(a.get('value'))}"
    if t is EventType.WORKFLOW_TASK_FAILED:
        return f"workflow task failed on {a.get('worker')}  {_failure(a.get('failure'))}"
    if t is EventType.WORKFLOW_COMPLETED:
        return f"completed in {_duration(e.ts - t0)}  ->  {_value(a.get('result'))}"
    if t is EventType.WORKFLOW_FAILED:
        return f"failed after {_duration(e.ts - t0)}  {_failure(a.get('failure'))}"
    if t is EventType.WORKFLOW_CANCELED:
        return f"cancelled after {_duration(e.ts - t0)}" + (
            f": {a['reason']}" if a.get("reason") else ""
        )
    if t is EventType.WORKFLOW_TERMINATED:
        return (
            f"terminated after {_duration(e.ts - t0)}"
            + (f": {a['reason']}" if a.get("reason") else "")
            + _by(a)
        )
    if t is EventType.WORKFLOW_CONTINUED_AS_NEW:
        return f"continued as new run {a.get('new_run_id')}  ({_args(a.get('input'))})"
    if t in (EventType.POLICY_DECISION, EventType.SIGNAL_REFUSED):
        return _policy_text(e)
    shown = {k: _short(_decoded(v)) for k, v in a.items()}
    return f"{t.value}  {json.dumps(shown, ensure_ascii=False, default=str)}" if shown else t.value


def _policy_text(e: HistoryEvent) -> str:
    """A policy's decision: what it was about and its reason (which names rules, version)."""
    a = e.attrs
    if e.type is EventType.SIGNAL_REFUSED:
        return f"signal {a.get('name')} refused  {a.get('reason')}" + _by(a)
    verdict = "policy" if a.get("allow") else "refused"
    return f"{verdict} {a.get('action')}  {a.get('reason')}" + _by(a)


def _by(attrs: dict[str, Any]) -> str:
    """Who sent the input (auth on): its subject and role, from the verified identity, and
    the key that signed it."""
    by = attrs.get("by")
    if not isinstance(by, dict):
        return ""
    notes = [",".join(by.get("roles") or [])]
    if by.get("key_id"):
        notes.append(f"signed with key {by['key_id']}")
    note = ", ".join(n for n in notes if n)
    who = f"by {by['subject']}" if by.get("subject") else ""
    if not who and not note:
        return ""
    return "  " + " ".join(p for p in (who, f"({note})" if note else "") if p)


def _failure(failure: Any) -> str:
    if not isinstance(failure, dict):
        return "(no details)"
    message = str(failure.get("message", "")).strip().splitlines()
    first = message[0] if message else ""
    return f"{failure.get('type', 'Error')}: {first}" + (" ..." if len(message) > 1 else "")


def _decoded(payload: Any) -> Any:
    if isinstance(payload, bytes):
        try:
            return unpack(payload)
        except PayloadError:
            return f"<{len(payload)} bytes>"
    return payload


def _value(payload: Any) -> str:
    return _short(_decoded(payload))


def _args(payload: Any) -> str:
    """A payload that holds an argument list, shown as the call's arguments."""
    value = _decoded(payload)
    if isinstance(value, list):
        return _cut(", ".join(_short(v, width=None) for v in value))
    return "" if value is None else _short(value)


def _short(value: Any, width: int | None = _WIDTH) -> str:
    text = json.dumps(value, ensure_ascii=False, default=_opaque, separators=(", ", ": "))
    return _cut(text) if width else text


def _cut(text: str) -> str:
    return text if len(text) <= _WIDTH else text[: _WIDTH - 3] + "..."


def _opaque(value: Any) -> str:
    return f"<{len(value)} bytes>" if isinstance(value, bytes) else repr(value)


def _duration(ms: int) -> str:
    if ms < 1000:
        return f"{ms} ms"
    if ms < 60_000:
        return f"{ms / 1000:.3f}".rstrip("0").rstrip(".") + " s"
    s = ms // 1000
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def _offset(ms: int) -> str:
    if ms < 0:  # an event stamped before the start (clocks of different hubs)
        return f"-{-ms / 1000:.3f}s"
    if ms < 3_600_000:
        return f"+{ms / 1000:.3f}s"
    s = ms // 1000
    return f"+{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s"


def _clock(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"
