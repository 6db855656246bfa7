"""The one error a policy problem raises, with where it is."""

from __future__ import annotations

from immortal._errors import ImmortalError

__all__ = ["PolicyError"]


class PolicyError(ImmortalError):
    """A policy file, rule, case or request that cannot be used, and where the problem is.

    ``str()`` is one line a person can act on, for example
    ``policy.yaml:14: rule r-clerk-limit: unknown action 'workflow.strat'``.
    """

    def __init__(
        self,
        problem: str,
        *,
        source: str | None = None,
        line: int | None = None,
        rule: str | None = None,
    ) -> None:
        self.problem = problem
        self.source = source
        self.line = line
        self.rule = rule
        #: Further problems found in the same check, each with its own place.
        self.more: tuple[PolicyError, ...] = ()
        super().__init__(self._one_line())

    def _one_line(self) -> str:
        where = self.source or ""
        if self.line is not None:
            where = f"{where}:{self.line}" if where else f"line {self.line}"
        parts = [p for p in (where, f"rule {self.rule}" if self.rule else "") if p]
        return ": ".join([*parts, self.problem])
