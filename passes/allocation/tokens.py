"""Token reduction by measurement: a keep rate per block, chosen by the output error each block's reduction costs
(measured in ONNX Runtime on the calibration data, or on random inputs at the --dim sizes) per MAC it saves,
until the model's MACs reach the target. As the structured allocator does: sensitivity measured once per block
and rate, the budget spent greedily where error per MAC is least, the MACs of every step counted exactly."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import onnx_ir as ir

from graphprune import progress
from graphprune.analysis.tokens import find_token_flow
from graphprune.errors import GraphpruneError
from graphprune.io import runtime
from graphprune.ir.model import copy_model
from graphprune.passes.rewrite.tokens import TokenSchedule, insert_token_reduction
from graphprune.verify.cost import cost
from graphprune.verify.drift import squared_error_ratio

log = logging.getLogger("graphprune")
LEVELS = {"topk": (0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3), "merge": (0.9, 0.8, 0.7, 0.6, 0.5)}


@dataclass
class TokenChoice:
    """The schedule chosen, its MACs (fraction of the dense model's at `dims`) and its measured output error."""

    schedule: TokenSchedule
    macs: float
    error: float
    measured: int  # sensitivity evaluations run

    def as_meta(self) -> dict:
        return {"macs": round(self.macs, 4), "error": self.error, "evaluations": self.measured}


def measured_tokens(model: ir.Model, base: TokenSchedule, target: float, dims: dict[str, int] | None,
                    feeds: list[dict]) -> TokenChoice:
    """The per-block keep rates (over `base`'s blocks, else every eligible block) that bring `model`'s MACs to
    `target` × the dense model's at least error per MAC saved on `feeds`."""
    flow = find_token_flow(model, base.protect)
    blocks = base.blocks or tuple(site.block for site in flow.eligible())
    probe = replace(base, keep=1.0, blocks=blocks or None)
    probe.chosen(flow)  # refuses, with the reasons, when no block can reduce its tokens
    dense_macs = cost(model, None, dims).macs
    dense_session = runtime.session(model)
    dense = [runtime.run(dense_session, f) for f in feeds]

    def reduced(keeps: dict[int, float]) -> ir.Model:
        copy = copy_model(model)
        insert_token_reduction(copy, replace(base, keep=tuple(keeps[b] for b in blocks), blocks=blocks))
        return copy

    def macs_of(keeps: dict[int, float]) -> float:
        return cost(reduced(keeps), None, dims).macs / dense_macs

    def error_of(keeps: dict[int, float]) -> float:
        session = runtime.session(reduced(keeps))
        return squared_error_ratio(dense, [runtime.run(session, f) for f in feeds])

    levels = LEVELS[base.method]
    full = dict.fromkeys(blocks, 1.0)
    pairs = [(block, level) for block in blocks for level in levels]
    with progress.step("measuring token sensitivity"):
        errors = {pair: error_of({**full, pair[0]: pair[1]}) for pair in progress.iterate(pairs, "measuring", "rate")}
    keeps, current = dict(full), 1.0
    while current > target:
        best = None
        for block in blocks:
            lower = [level for level in levels if level < keeps[block]]
            if not lower:
                continue
            trial = {**keeps, block: lower[0]}
            saved = current - macs_of(trial)
            if saved <= 0:
                continue
            cost_per_mac = max(0.0, errors[block, lower[0]] - errors.get((block, keeps[block]), 0.0)) / saved
            if best is None or cost_per_mac < best[0]:
                best = (cost_per_mac, trial, current - saved)
        if best is None:
            raise GraphpruneError(f"--tokens auto --target-flops {target:g}: token reduction alone reaches "
                                  f"{current:.3f} of the MACs at the lowest rates ({levels[-1]:g} before every "
                                  f"eligible block: {', '.join(map(str, blocks))})")
        _, keeps, current = best
    reducing = tuple(b for b in blocks if keeps[b] < 1) or blocks  # a block kept whole gets no reduction ops
    schedule = replace(base, keep=tuple(keeps[b] for b in reducing), blocks=reducing)
    log.info("token rates chosen: %s (MACs %.3f)", ", ".join(f"block {b}: {keeps[b]:g}" for b in blocks), current)
    return TokenChoice(schedule, current, error_of(keeps), len(pairs) + 1)
