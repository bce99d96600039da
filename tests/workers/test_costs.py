"""workers.costs: CPU seconds per stage."""
from __future__ import annotations

import pytest

from workers.costs import STAGES, StageCosts


def test_stage_costs_add_up_per_stage():
    ticks = iter([1.0, 1.5, 2.0, 4.0])
    costs = StageCosts(clock=lambda: next(ticks))
    with costs.measure("decode"):
        pass
    with costs.measure("decode"):
        pass
    snapshot = costs.snapshot()
    assert set(snapshot) == set(STAGES)
    assert snapshot["decode"] == 2.5 and snapshot["encode"] == 0.0
    with pytest.raises(KeyError):
        costs.add("no such stage", 1.0)
