"""One run's payloads through the payload codec: sealed as the code issues commands,
opened as history resolves what the code waits on (live and on replay alike).

A payload sealed with a key this worker's ring lacks raises :class:`KeyNotInRingError`
out of the activation: the workflow task fails (recorded, naming the field and key id)
and is retried, so the run goes on once the key is back. A ciphertext that does not open
under its key was altered or moved from elsewhere, which no retry mends: a refused input
fails the run, a refused signal is dropped (logged to the run's log), a refused result
reaches the code as the activity's or child's failure.
"""

from __future__ import annotations

import logging
from typing import Any

from immortal._context import WorkflowInfo
from immortal._errors import ApplicationError
from immortal._revealed import mismatch, mismatch_error
from immortal._wire import EventType, Failure, HistoryEvent
from immortal.codec import Binding, CiphertextRefusedError, PayloadCodec
from immortal.codec._fields import (
    CONTINUE_INPUT,
    FAILURE,
    RESULT,
    STATUS,
    activity_field,
    child_input_field,
    signal_field,
    start_binding,
)
from immortal.codec._sealing import open_failure, open_payload, seal, seal_failure

__all__ = ["RunSeals"]

_NIL = b"\xc0"


class RunSeals:
    def __init__(self, codec: PayloadCodec | None, info: WorkflowInfo) -> None:
        self.codec = codec
        self.here = Binding(info.tenant, info.workflow_id, info.run_id, "")

    # sealing what the code issues ----------------------------------------------------

    def activity_input(self, seq: int, payload: bytes) -> bytes:
        return seal(self.codec, self.here.at(activity_field(seq, "input")), payload)

    def child_input(self, child_workflow_id: str, payload: bytes) -> bytes:
        return seal(self.codec, self.here.at(child_input_field(child_workflow_id)), payload)

    def status(self, payload: bytes) -> bytes:
        return seal(self.codec, self.here.at(STATUS), payload)

    def result(self, payload: bytes) -> bytes:
        return seal(self.codec, self.here.at(RESULT), payload)

    def continue_input(self, payload: bytes) -> bytes:
        return seal(self.codec, self.here.at(CONTINUE_INPUT), payload)

    def run_failure(self, failure: Failure) -> Failure:
        return seal_failure(self.codec, self.here.at(FAILURE), failure)

    # opening what history brings -----------------------------------------------------

    def start_input(self, ev: HistoryEvent) -> bytes | Exception:
        """The run's arguments, or the refusal to fail it with."""
        h = self.here
        binding = start_binding(h.tenant, h.workflow_id, h.run_id, ev.attrs)
        try:
            payload = open_payload(self.codec, binding, ev.attrs.get("input")) or b"\x90"
        except CiphertextRefusedError as exc:
            return exc
        revealed = ev.attrs.get("policy_input")
        if isinstance(revealed, dict):
            # The policy decided on these; the code must get what was decided on.
            why = mismatch(revealed, payload)
            if why is not None:
                return mismatch_error(why)
        return payload

    def signal(self, ev: HistoryEvent, run_log: logging.LoggerAdapter[Any]) -> bytes | None:
        """The signal's payload; None if refused (the run goes on without it)."""
        name = str(ev.attrs.get("name"))
        try:
            return (
                open_payload(self.codec, self.here.at(signal_field(name)), ev.attrs.get("input"))
                or _NIL
            )
        except CiphertextRefusedError as exc:
            run_log.error("signal %r (event %d) refused and dropped: %s", name, ev.id, exc)
            return None

    def resolved(self, ev: HistoryEvent, seq: int) -> bytes | ApplicationError:
        """An activity's or child's result, or the error the code gets instead."""
        try:
            return (
                open_payload(self.codec, self._of(ev, seq, RESULT), ev.attrs.get("result")) or _NIL
            )
        except CiphertextRefusedError as exc:
            return ApplicationError(str(exc), type=type(exc).__name__, non_retryable=True)

    def failure(self, ev: HistoryEvent, seq: int) -> dict[str, Any]:
        """An activity's or child's failure with its sealed parts opened."""
        failure: dict[str, Any] = ev.attrs["failure"]
        try:
            return open_failure(self.codec, self._of(ev, seq, FAILURE), failure)
        except CiphertextRefusedError as exc:
            return {**failure, "message": str(exc)}

    def _of(self, ev: HistoryEvent, seq: int, field: str) -> Binding:
        if ev.type in (EventType.CHILD_WORKFLOW_COMPLETED, EventType.CHILD_WORKFLOW_FAILED):
            child = str(ev.attrs.get("workflow_id")), str(ev.attrs.get("run_id"))
            return Binding(self.here.tenant, *child, field)
        return self.here.at(activity_field(seq, field))
