"""One root error; errors that cross a process boundary travel as :class:`Failure`."""

from __future__ import annotations

import traceback as _tb
from typing import Any

__all__ = [
    "ActivityCancelledError",
    "ActivityError",
    "ApplicationError",
    "ChildWorkflowError",
    "ImmortalError",
    "LeaseMismatchError",
    "NonDeterminismError",
    "NotSetUpError",
    "PayloadError",
    "ServerUnreachableError",
    "UnknownWorkflowTypeError",
    "WorkflowAlreadyStartedError",
    "WorkflowClosedError",
    "WorkflowFailedError",
    "WorkflowNotFoundError",
]


class ImmortalError(Exception):
    """Root of every error Immortal raises."""


class ApplicationError(ImmortalError):
    """An error raised by user code that should cross process boundaries intact.

    >>> raise ApplicationError("card declined", type="CardDeclined", non_retryable=True)
    """

    def __init__(
        self,
        message: str,
        *,
        type: str | None = None,
        non_retryable: bool = False,
        details: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.type = type or "ApplicationError"
        self.non_retryable = non_retryable
        self.details = details
        self.remote_traceback: str | None = None

    def __str__(self) -> str:
        return f"{self.type}: {self.message}"


class ActivityError(ImmortalError):
    """Raised in workflow code when an activity failed; ``cause`` is the last error."""

    def __init__(self, activity: str, cause: ApplicationError) -> None:
        super().__init__(f"activity {activity!r} failed: {cause}")
        self.activity = activity
        self.cause = cause


class WorkflowFailedError(ImmortalError):
    """Raised by ``handle.result()`` when the run failed; ``cause`` is its error."""

    def __init__(self, workflow_id: str, run_id: str, cause: ApplicationError) -> None:
        super().__init__(f"workflow {workflow_id!r} (run {run_id}) failed: {cause}")
        self.workflow_id = workflow_id
        self.run_id = run_id
        self.cause = cause


class ChildWorkflowError(ImmortalError):
    """Raised in a parent's workflow code when a child run failed, timed out or was
    cancelled; ``cause`` is the child's error."""

    def __init__(self, workflow_type: str, workflow_id: str, cause: ApplicationError) -> None:
        super().__init__(f"child workflow {workflow_type} {workflow_id!r} failed: {cause}")
        self.workflow_type = workflow_type
        self.workflow_id = workflow_id
        self.cause = cause


class WorkflowClosedError(ImmortalError):
    """A signal was sent to a run that has already closed."""


class WorkflowAlreadyStartedError(ImmortalError):
    """A start was refused by the workflow-id reuse policy: the id is taken."""

    def __init__(self, workflow_id: str, run_id: str) -> None:
        super().__init__(f"workflow {workflow_id!r} already has run {run_id}")
        self.workflow_id = workflow_id
        self.run_id = run_id


class ActivityCancelledError(ImmortalError):
    """Raised in activity code (from ``heartbeat()``) once its attempt no longer counts:
    timed out, or its lease handed to another worker. Stop and let it propagate."""


class NonDeterminismError(ImmortalError):
    """Workflow code, replayed, issued a command that does not match the recorded event.

    ``event_id`` is the history event where code and history part, ``history`` what history
    has there and ``code`` what the code issued instead.
    """

    def __init__(
        self, message: str, *, event_id: int | None = None, history: str = "", code: str = ""
    ) -> None:
        super().__init__(message)
        self.event_id = event_id
        self.history = history
        self.code = code


class UnknownWorkflowTypeError(ImmortalError):
    """A workflow task names a workflow type that this worker does not serve."""


class LeaseMismatchError(ImmortalError):
    """A worker asked for a lease its queue cannot honour (longer than the queue's)."""


class PayloadError(ImmortalError):
    """A message or payload could not be decoded, or is too large."""


class WorkflowNotFoundError(ImmortalError):
    """No run is known under that workflow id (and run id)."""


class NotSetUpError(ImmortalError):
    """The NATS server is not set up for Immortal: it runs without JetStream, or no hub has
    created Immortal's streams and buckets there (under this prefix) yet."""


class ServerUnreachableError(ImmortalError):
    """No NATS server answered within the connect timeout; the message names the address
    and why (connection refused, unknown host, no answer, ...)."""


def failure_from_exception(exc: BaseException) -> dict[str, Any]:
    """The wire form of ``exc`` (see ``immortal._wire.Failure``)."""
    tb = "".join(_tb.format_exception(exc))
    if isinstance(exc, ApplicationError):
        from immortal._codec import to_wire

        return {
            "type": exc.type,
            "message": exc.message,
            "non_retryable": exc.non_retryable,
            "details": to_wire(exc.details) if exc.details is not None else None,
            "traceback": exc.remote_traceback or tb,
        }
    if isinstance(exc, ActivityError):
        inner = failure_from_exception(exc.cause)
        return {
            "type": "ActivityError",
            "message": str(exc),
            "non_retryable": False,
            "details": None,
            "traceback": tb,
            "cause": inner,
        }
    return {
        "type": type(exc).__name__,
        "message": str(exc),
        # Retrying cannot shrink a payload that is too large, or make bad bytes decode.
        "non_retryable": isinstance(exc, PayloadError),
        "details": None,
        "traceback": tb,
    }


def exception_from_failure(failure: dict[str, Any]) -> ApplicationError:
    """Rebuild an :class:`ApplicationError` from its wire form."""
    err = ApplicationError(
        failure.get("message", ""),
        type=failure.get("type"),
        non_retryable=bool(failure.get("non_retryable", False)),
        details=failure.get("details"),
    )
    err.remote_traceback = failure.get("traceback")
    cause = failure.get("cause")
    if cause:
        err.__cause__ = exception_from_failure(cause)
    return err
