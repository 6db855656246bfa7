"""The actions a policy speaks about, and the patterns rules name them by."""

from __future__ import annotations

__all__ = ["ACTIONS", "expand_actions"]

#: Every action the hub will ask about. ``schedule.*`` and ``admin.*`` in a rule name the
#: whole family; ``*`` names them all.
ACTIONS: tuple[str, ...] = (
    "workflow.start",
    "workflow.signal",
    "workflow.cancel",
    "workflow.terminate",
    "workflow.read",
    "logs.read",
    "worker.serve",
    "activity.run",
    "schedule.create",
    "schedule.read",
    "schedule.pause",
    "schedule.resume",
    "schedule.delete",
    "admin.policy",
    "admin.audit",
    "admin.dlq",
    "admin.retention",
)

_KNOWN = frozenset(ACTIONS)

# What a reason says someone may do: "start workflows of type refund", "read logs on ...".
VERBS: dict[str, str] = {
    "workflow.start": "start",
    "workflow.signal": "signal",
    "workflow.cancel": "cancel",
    "workflow.terminate": "terminate",
    "workflow.read": "read",
    "logs.read": "read the logs of",
    "worker.serve": "serve",
    "activity.run": "run",
    "schedule.create": "create",
    "schedule.read": "read",
    "schedule.pause": "pause",
    "schedule.resume": "resume",
    "schedule.delete": "delete",
    "admin.policy": "change the policy of",
    "admin.audit": "read the audit log of",
    "admin.dlq": "manage the dead-letter queue of",
    "admin.retention": "change the retention of",
}


def expand_actions(pattern: str) -> tuple[str, ...]:
    """The actions ``pattern`` names: an action, a family (``schedule.*``) or ``*``.

    >>> expand_actions("schedule.*")[:2]
    ('schedule.create', 'schedule.read')

    Raises ``ValueError`` naming the closest known action for a pattern that names none,
    so a typo in a rule is an error at load time rather than a rule that never applies.
    """
    if pattern == "*":
        return ACTIONS
    if pattern.endswith(".*"):
        family = pattern[:-1]
        found = tuple(a for a in ACTIONS if a.startswith(family))
        if found:
            return found
    elif pattern in _KNOWN:
        return (pattern,)
    raise ValueError(f"unknown action {pattern!r}{_suggest(pattern)}")


def check_action(action: str) -> str:
    """``action`` if it is one the policy knows; ``ValueError`` otherwise."""
    if action not in _KNOWN:
        raise ValueError(f"unknown action {action!r}{_suggest(action)}")
    return action


def _suggest(word: str) -> str:
    import difflib

    families = sorted({a.split(".")[0] + ".*" for a in ACTIONS})
    close = difflib.get_close_matches(word, [*ACTIONS, *families], n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(ACTIONS)})"
