"""docs/security.md's table of permissions per role is the one the auth service grants."""

from __future__ import annotations

from pathlib import Path

from immortal.security import permission_table

DOC = Path(__file__).parent.parent / "docs" / "security.md"


def test_the_permission_table_in_the_docs_is_the_granted_one() -> None:
    table = permission_table().strip()
    assert "$KV.imm-policy.T.>" in table and "imm.audit.T" in table  # admin: policy, audit
    assert table in DOC.read_text(), (
        "docs/security.md's permission table is out of date: paste "
        "immortal.security.permission_table() into it"
    )
