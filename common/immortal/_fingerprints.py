"""What a worker's registration says about each definition it serves, and where two live
workers of one queue disagree.

Tasks go to any worker of a queue that serves the name, so two workers registering the same
workflow or activity name with different code would silently split its tasks between them.
A definition's signature (its argument and result types, as a text) and a fingerprint of it
travel in the worker's registration (``imm-workers``); a worker warns at start when a live
one on its queue has another fingerprint for a name, and ``immortal workers`` shows it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from immortal._definitions import ActivityDefinition, WorkflowDefinition

__all__ = ["Conflict", "Registered", "conflicts", "definition_key", "fingerprint", "signature"]


def definition_key(defn: WorkflowDefinition | ActivityDefinition) -> str:
    """``workflow:<name>`` or ``activity:<name>``: a key of a registration's fingerprints."""
    kind = "workflow" if isinstance(defn, WorkflowDefinition) else "activity"
    return f"{kind}:{defn.name}"


def signature(defn: WorkflowDefinition | ActivityDefinition) -> str:
    """The argument and result types, e.g. ``(myapp.orders.Order) -> int``."""
    args = ", ".join(_type_name(t) for t in defn.arg_types)
    return f"({args}) -> {_type_name(defn.return_type)}"


def fingerprint(defn: WorkflowDefinition | ActivityDefinition) -> str:
    """A short hash of the key and the signature: equal for the same definition."""
    text = f"{definition_key(defn)}{signature(defn)}"
    return hashlib.sha256(text.encode()).hexdigest()[:12]


class Registered(Protocol):
    """What :func:`conflicts` reads of a registration (``immortal.WorkerInfo`` has it)."""

    @property
    def worker(self) -> str: ...
    @property
    def queues(self) -> Sequence[str]: ...
    @property
    def fingerprints(self) -> Mapping[str, str]: ...
    @property
    def signatures(self) -> Mapping[str, str]: ...


@dataclass(frozen=True)
class Conflict:
    """One name that live workers of one queue register with different signatures."""

    queue: str
    key: str  # workflow:<name> or activity:<name>
    signatures: dict[str, str]  # worker id -> the signature it registered

    def __str__(self) -> str:
        kind, _, name = self.key.partition(":")
        each = "; ".join(f"{worker} has {sig}" for worker, sig in sorted(self.signatures.items()))
        return f"{kind} {name!r} on queue {self.queue!r} differs between workers: {each}"


def conflicts(workers: Iterable[Registered]) -> list[Conflict]:
    """Names registered with different fingerprints by live workers on a shared queue
    (registrations from before fingerprints have none, and are left out)."""
    seen: dict[tuple[str, str], dict[str, tuple[str, str]]] = {}
    for w in workers:
        for queue in w.queues:
            for key, print_ in w.fingerprints.items():
                sig = w.signatures.get(key, print_)
                seen.setdefault((queue, key), {})[w.worker] = (print_, sig)
    found = []
    for (queue, key), by_worker in sorted(seen.items()):
        if len({p for p, _ in by_worker.values()}) > 1:
            found.append(Conflict(queue, key, {w: sig for w, (_, sig) in by_worker.items()}))
    return found


def _type_name(t: Any) -> str:
    if t is Any:
        return "Any"
    if isinstance(t, type):
        if t.__module__ == "builtins":
            return t.__qualname__
        return f"{t.__module__}.{t.__qualname__}"
    return repr(t).replace("typing.", "")
