"""The policy document a tenant writes: its relation tuples and its rules."""

from __future__ import annotations

import difflib
import zoneinfo
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from immortal._names import validate_tenant
from immortal.policy._actions import expand_actions
from immortal.policy._conditions import parse_condition
from immortal.policy._relations import Tuple, parse_entity, parse_path, parse_tuple

__all__ = ["RESOURCE_PATTERN_FIELDS", "PolicyDocument", "Rule", "rule_kinds"]

#: The fields a rule's ``resources`` patterns may name; ``*`` in a value matches any run
#: of characters (``refund*``), as Cedar's ``like`` does.
RESOURCE_PATTERN_FIELDS = ("queue", "workflow_type", "workflow_id", "activity_type", "schedule_id")


def _action_pattern(value: str) -> str:
    expand_actions(value)
    return value


def _name(value: str) -> str:
    if not value.strip():
        raise ValueError("names may not be empty")
    return value


ActionPattern = Annotated[str, AfterValidator(_action_pattern)]
Name = Annotated[str, AfterValidator(_name)]
Entity = Annotated[str, AfterValidator(parse_entity)]
RelationTuple = Annotated[Tuple, BeforeValidator(parse_tuple)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Rule(_Strict):
    """One rule. Every part given must hold for it to apply:

    - ``actions``: actions or families (``workflow.*``) it covers;
    - ``roles`` / ``groups`` / ``principals``: who (RBAC), at least one of each list given;
    - ``relation``: a path through relation tuples from the resource to the principal
      (ReBAC), e.g. ``resource.queue managed-by principal``;
    - ``resources``: patterns on the resource's fields, any one of them;
    - ``when``: a condition on principal, resource, input and context (ABAC).

    An ``allow`` rule grants; a ``deny`` rule refuses, and wins over every allow.
    """

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$", max_length=128)
    effect: Literal["allow", "deny"]
    actions: tuple[ActionPattern, ...] = Field(min_length=1)
    description: str = ""
    roles: tuple[Name, ...] = ()
    groups: tuple[Name, ...] = ()
    principals: tuple[Entity, ...] = ()
    relation: str | None = None
    resources: tuple[dict[str, str], ...] = ()
    when: str | None = None

    @field_validator("relation")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        if value is not None:
            parse_path(value)
        return value

    @field_validator("when")
    @classmethod
    def _condition(cls, value: str | None) -> str | None:
        if value is not None:
            parse_condition(value)
        return value

    @field_validator("resources", mode="before")
    @classmethod
    def _patterns(cls, value: Any) -> Any:
        patterns = [value] if isinstance(value, dict) else value
        if not isinstance(patterns, list | tuple):
            raise ValueError("resources is a mapping of field to pattern, or a list of them")
        for pattern in patterns:
            if not isinstance(pattern, dict) or not pattern:
                raise ValueError("each resource pattern is a non-empty mapping of field to pattern")
            for key, glob in pattern.items():
                if key not in RESOURCE_PATTERN_FIELDS:
                    close = difflib.get_close_matches(str(key), RESOURCE_PATTERN_FIELDS, n=1)
                    hint = f"did you mean {close[0]!r}?" if close else (
                        "fields: " + ", ".join(RESOURCE_PATTERN_FIELDS)
                    )  # fmt: skip
                    raise ValueError(f"no resource field {key!r} ({hint})")
                if not isinstance(glob, str) or not glob:
                    raise ValueError(f"the pattern for {key} must be a non-empty string")
        return patterns


class PolicyDocument(_Strict):
    """A tenant's policy, as written in a policy file and stored per tenant.

    ``version`` grows with every change; each decision records the version it used.
    ``timezone`` is where ``context.hour`` and friends are read. ``group_type`` is the
    entity type a bare group claim names (``ops`` is ``group:ops``), ``principal_types``
    the types a subject may carry itself (a subject ``team:support`` is that team).
    """

    tenant: str
    version: int = Field(ge=1)
    description: str = ""
    timezone: str = "UTC"
    group_type: str = "group"
    principal_types: tuple[str, ...] = ("user", "service", "team")
    relations: tuple[RelationTuple, ...] = ()
    rules: tuple[Rule, ...] = ()

    @field_validator("tenant")
    @classmethod
    def _tenant(cls, value: str) -> str:
        return validate_tenant(value)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {value!r} (use an IANA name such as UTC)"
            ) from None
        return value

    @field_validator("group_type")
    @classmethod
    def _group_type(cls, value: str) -> str:
        parse_entity(f"{value}:x")
        return value

    @field_validator("principal_types")
    @classmethod
    def _principal_types(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for kind in value:
            parse_entity(f"{kind}:x")
        return value

    @model_validator(mode="after")
    def _unique_ids(self) -> PolicyDocument:
        seen: set[str] = set()
        for rule in self.rules:
            if rule.id in seen:
                raise ValueError(f"rule id {rule.id!r} is used twice")
            seen.add(rule.id)
        return self


def rule_kinds(rule: Rule) -> str:
    """``rbac``, ``rebac``, ``abac`` or a blend such as ``rbac+abac``; ``any`` for a rule
    that names no one and no condition (it applies to every principal of the tenant)."""
    kinds = [
        name
        for name, present in (
            ("rbac", rule.roles or rule.groups or rule.principals),
            ("rebac", rule.relation),
            ("abac", rule.when),
        )
        if present
    ]
    return "+".join(kinds) or "any"
