"""The sample plans the README points to must stay valid plans."""

from __future__ import annotations

from pathlib import Path

import pytest

from ceremony.plan import describe, load_plan

EXAMPLES = Path(__file__).resolve().parents[2] / "ceremony" / "examples"


@pytest.mark.parametrize("name,kind", [("root-ceremony.yaml", "root"), ("intermediate-ceremony.yaml", "intermediate")])
def test_sample_plans_are_valid(name: str, kind: str) -> None:
    plan, raw = load_plan(EXAMPLES / name)
    assert plan.ceremony == kind and raw == (EXAMPLES / name).read_bytes()
    assert plan.quorum.threshold == 3 and plan.quorum.shares == len(plan.custodians) == 5
    assert any("quorum 3 of 5" in line for line in describe(plan))
    if kind == "intermediate":
        nc = plan.profile().name_constraints
        assert nc is not None and nc.permitted_subtrees and nc.excluded_subtrees
