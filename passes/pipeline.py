"""The whole job, in pipeline order: load → analyze → score → allocate → rewrite → verify → save."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from graphprune import verify
from graphprune.analysis import Analysis, analyze
from graphprune.errors import GraphpruneError
from graphprune.groups import Group
from graphprune.io import load_model, save_model
from graphprune.metrics import Cost, cost
from graphprune.passes.allocation import uniform
from graphprune.passes.importance import get_criterion
from graphprune.passes.rewrite import apply_plan
from graphprune.plan import PruningPlan


@dataclass
class PruneResult:
    plan: PruningPlan
    before: Cost
    after: Cost
    groups: list[Group]
    verification: verify.Verification

    @property
    def groups_pruned(self) -> int:
        return len(self.plan.removed)


def make_plan(analysis: Analysis, criterion: str = "l2", ratio: float = 0.5, round_to: int = 1,
              seed: int = 0, kind_ratios: dict[str, float] | None = None) -> PruningPlan:
    """Score every prunable group with `criterion` and allocate `ratio` (per kind: `kind_ratios`) uniformly."""
    options = {"seed": seed} if criterion == "random" else {}
    scorer = get_criterion(criterion, **options)
    scores = {g.id: scorer.score(analysis, g) for g in analysis.prunable()}
    plan = uniform(analysis, scores, ratio, round_to, kind_ratios)
    plan.meta["criterion"] = criterion
    return plan


def prune_file(source: str | os.PathLike, target: str | os.PathLike, criterion: str = "l2",
               ratio: float = 0.5, round_to: int = 1, seed: int = 0, kind_ratios: dict[str, float] | None = None,
               prune_hidden: bool = False) -> PruneResult:
    """Prune `source` into `target`; `target` is written only once the pruned model passed the checks the
    original passes. `prune_hidden` allows approximate groups (the hidden dimension under normalisation)."""
    source, target = Path(source), Path(target)
    if source.resolve() == target.resolve():
        raise GraphpruneError("the output path must differ from the input (the input is never modified)")
    model = load_model(source)
    before = cost(model, source)
    analysis = analyze(model, allow_approximate=prune_hidden)
    plan = make_plan(analysis, criterion, ratio, round_to, seed, kind_ratios)
    pruned = apply_plan(analysis, plan)
    checks = verify.verify_like(source, pruned)
    save_model(pruned, target)
    return PruneResult(plan, before, cost(pruned, target), analysis.groups, checks)
