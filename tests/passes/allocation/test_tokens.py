"""Token keep rates chosen by measurement: the target is reached, the rates come from the measured levels, and a
target token reduction cannot reach is refused with what it can reach."""

from __future__ import annotations

import numpy as np
import pytest

from graphprune.errors import GraphpruneError
from graphprune.passes.allocation.tokens import LEVELS, measured_tokens
from graphprune.passes.rewrite.tokens import TokenSchedule
from tests.harness import load

pytest.importorskip("torch")


def test_rates_are_measured_to_the_target_and_an_unreachable_one_is_refused(exported):
    vit = exported("vit", True)
    feeds = [{"x": np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)}]
    choice = measured_tokens(load(vit), TokenSchedule(1.0), 0.9, None, feeds)
    assert choice.macs <= 0.9 and choice.schedule.blocks == (1,) and choice.error > 0
    assert all(rate in LEVELS["topk"] for rate in choice.schedule.rates())
    with pytest.raises(GraphpruneError, match="token reduction alone reaches 0.[0-9]+ of the MACs at the lowest"):
        measured_tokens(load(vit), TokenSchedule(1.0), 0.05, None, feeds)
