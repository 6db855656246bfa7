"""Engines by name, for tools that let the user pick one."""

from __future__ import annotations

from immortal.policy._document import PolicyDocument
from immortal.policy._engine import BuiltinEngine, PolicyEngine
from immortal.policy._errors import PolicyError

__all__ = ["ENGINE_NAMES", "make_engine"]

ENGINE_NAMES = ("builtin", "cedar")


def make_engine(document: PolicyDocument, engine: str = "builtin") -> PolicyEngine:
    """The engine called ``engine`` for ``document``: ``builtin`` or ``cedar``."""
    if engine == "builtin":
        return BuiltinEngine(document)
    if engine == "cedar":
        from immortal.policy._cedar import CedarEngine

        return CedarEngine(document)
    raise PolicyError(f"unknown policy engine {engine!r} (engines: {', '.join(ENGINE_NAMES)})")
