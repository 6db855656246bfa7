"""Permission violations the broker reports (asynchronously, as ``-ERR``) turned into a
:class:`PermissionDeniedError` for the caller that caused them, instead of a request that
times out or is retried for twenty seconds."""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable
from typing import Any

from immortal.security.errors import PermissionDeniedError

__all__ = ["Violations", "on_violation", "violation_for"]

_PATTERN = re.compile(r"permissions violation for (publish|subscription) to \\?\"?([^\"\\]+)", re.I)
_by_connection: weakref.WeakKeyDictionary[Any, Violations] = weakref.WeakKeyDictionary()


class Violations:
    """The subjects a connection was refused, newest last (a bounded list)."""

    def __init__(self) -> None:
        self.refused: list[tuple[str, str]] = []  # (publish|subscription, subject)
        self.listeners: list[Callable[[str, PermissionDeniedError], None]] = []

    def record(self, exc: BaseException) -> bool:
        found = _PATTERN.search(str(exc))
        if found is None:
            return False
        # The server's message has the subject lowercased: compare without case.
        subject = found.group(2).strip().lower()
        self.refused.append((found.group(1).lower(), subject))
        del self.refused[:-64]
        refusal = self.find(subject)
        assert refusal is not None
        for listener in self.listeners:
            listener(subject, refusal)
        return True

    def attach(self, nc: Any) -> None:
        _by_connection[nc] = self

    def find(self, subject: str) -> PermissionDeniedError | None:
        wanted = subject.lower()
        for op, refused in reversed(self.refused):
            if refused == wanted:
                return PermissionDeniedError(
                    f"not permitted: {op} to {subject!r} (the token's tenant and role do not "
                    "allow it)"
                )
        return None


def violation_for(nc: Any, subject: str) -> PermissionDeniedError | None:
    """The refusal of ``subject`` this connection was told of, if any."""
    found = _by_connection.get(nc)
    return found.find(subject) if found is not None else None


def on_violation(nc: Any, listener: Callable[[str, PermissionDeniedError], None]) -> None:
    """Call ``listener(subject, error)`` (the subject lowercased) on each refusal."""
    found = _by_connection.get(nc)
    if found is not None:
        found.listeners.append(listener)
