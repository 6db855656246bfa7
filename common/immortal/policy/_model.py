"""What a decision is about (principal, resource, context) and the decision itself."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import UTC, datetime, tzinfo
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "RESOURCE_FACETS",
    "TIME_FIELDS",
    "Context",
    "Decision",
    "PolicyPrincipal",
    "PrincipalLike",
    "Resource",
]

#: The entities a resource is, by the type a relation tuple names them with:
#: ``workflow:order-42`` is the run with workflow id ``order-42``, ``queue:payments`` its
#: queue, and so on. The value is the :class:`Resource` field that holds the id.
RESOURCE_FACETS: dict[str, str] = {
    "workflow": "workflow_id",
    "queue": "queue",
    "workflow_type": "workflow_type",
    "activity_type": "activity_type",
    "schedule": "schedule_id",
    "tenant": "tenant",
}

#: What ``context.`` offers besides the caller's own attributes, all from ``Context.time``
#: in the policy's time zone: ``hour`` (0-23), ``minute`` (0-59), ``weekday`` (``mon`` ...
#: ``sun``), ``date`` (``2026-12-01``) and ``timestamp`` (seconds since the epoch).
TIME_FIELDS = ("hour", "minute", "weekday", "date", "timestamp")
_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@runtime_checkable
class PrincipalLike(Protocol):
    """Who is asking, as verified claims. Any object with these attributes will do, such
    as the identity layer's ``Principal``; the policy never reads anything else."""

    @property
    def subject(self) -> str: ...
    @property
    def tenant(self) -> str: ...
    @property
    def roles(self) -> Collection[str]: ...
    @property
    def groups(self) -> Collection[str]: ...
    @property
    def attributes(self) -> Mapping[str, Any]: ...


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PolicyPrincipal(_Frozen):
    """A principal written out by hand, for policy tests and ``policy explain``.

    >>> PolicyPrincipal(subject="ann", tenant="acme", roles=("writer",))
    PolicyPrincipal(subject='ann', tenant='acme', roles=('writer',), groups=(), attributes={})
    """

    subject: str = Field(min_length=1)
    tenant: str = Field(min_length=1)
    roles: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    attributes: dict[str, Any] = Field(default_factory=dict)


class Resource(_Frozen):
    """What an action is on. Set the fields that exist for the action: a start has a
    ``workflow_type``, ``queue``, ``workflow_id`` and ``input``; ``worker.serve`` has a
    ``queue``; ``activity.run`` an ``activity_type`` and the workflow's fields.

    ``input`` is the workflow's input as a mapping (rules read it as ``input.amount``);
    ``status`` the run's status; ``attributes`` anything else the caller knows.
    ``input_unreadable`` says why the input's fields cannot be read (``"the input is
    encrypted and the hub holds no key"``): a rule that would decide the request but reads
    a field not in ``input`` then denies it, naming the field and this reason.
    """

    tenant: str = Field(min_length=1)
    queue: str | None = None
    workflow_type: str | None = None
    workflow_id: str | None = None
    activity_type: str | None = None
    schedule_id: str | None = None
    status: str | None = None
    input: Mapping[str, Any] | None = None
    input_unreadable: str | None = None
    attributes: dict[str, Any] = Field(default_factory=dict)

    def facet(self, entity_type: str) -> str | None:
        """This resource as an entity of ``entity_type`` (see :data:`RESOURCE_FACETS`)."""
        value: str | None = getattr(self, RESOURCE_FACETS[entity_type])
        return None if value is None else f"{entity_type}:{value}"


class Context(_Frozen):
    """When, and anything else about the request that is neither principal nor resource.

    A time without a zone is taken as UTC. ``attributes`` may not reuse the names of
    :data:`TIME_FIELDS` or ``input``.
    """

    time: datetime = Field(default_factory=lambda: datetime.now(UTC))
    attributes: dict[str, Any] = Field(default_factory=dict)

    @field_validator("time")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)

    @field_validator("attributes")
    @classmethod
    def _no_shadowing(cls, value: dict[str, Any]) -> dict[str, Any]:
        taken = sorted(set(value) & {*TIME_FIELDS, "input"})
        if taken:
            raise ValueError(f"context attributes may not be named {', '.join(taken)}")
        return value

    def fields(self, zone: tzinfo) -> dict[str, Any]:
        """What ``context.<name>`` reads, in ``zone``."""
        local = self.time.astimezone(zone)
        return {
            **self.attributes,
            "hour": local.hour,
            "minute": local.minute,
            "weekday": _WEEKDAYS[local.weekday()],
            "date": local.date().isoformat(),
            "timestamp": int(self.time.timestamp()),
        }


class Decision(_Frozen):
    """The answer, and why.

    ``rule_ids`` are the rules that decided (every matching deny rule when denied by one,
    every matching allow rule when allowed; none for a default deny). ``facts`` are the
    values the deciding rules read, such as ``{"input.amount": 12000}``. A decision may be
    served again from the cache: treat it, facts included, as read-only.
    """

    allow: bool
    reason: str
    rule_ids: tuple[str, ...] = ()
    policy_version: int
    facts: dict[str, Any] = Field(default_factory=dict)
