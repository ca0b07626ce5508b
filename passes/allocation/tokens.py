"""Token reduction by measurement: a keep rate per block, chosen by the output error each block's reduction costs
(measured in ONNX Runtime on the calibration data, or on random inputs at the --dim sizes) per MAC it saves,
until the model's MACs reach the target. As the structured allocator does: sensitivity measured once per block
and rate, the budget spent greedily where error per MAC is least, the MACs of every step counted exactly.
`TokenSensitivity` is also what the joint allocation (`joint.py`) spends beside widths."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import onnx_ir as ir

from graphprune import progress
from graphprune.analysis.tokens import find_token_flow
from graphprune.errors import GraphpruneError
from graphprune.io import runtime
from graphprune.ir.model import copy_model
from graphprune.passes.rewrite.tokens import TokenSchedule, insert_token_reduction
from graphprune.verify.cost import cost, node_macs
from graphprune.verify.drift import squared_error_ratio

log = logging.getLogger("graphprune")
LEVELS = {"topk": (0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3), "merge": (0.9, 0.8, 0.7, 0.6, 0.5)}
Keeps = dict[int, float]  # block → keep rate before it (1: no reduction there)


@dataclass
class TokenChoice:
    """The schedule chosen, its MACs (fraction of the dense model's at `dims`) and its measured output error."""

    schedule: TokenSchedule
    macs: float
    error: float
    measured: int  # sensitivity evaluations run

    def as_meta(self) -> dict:
        return {"macs": round(self.macs, 4), "error": self.error, "evaluations": self.measured}


@dataclass
class TokenSensitivity:
    """The output error of `model` with tokens reduced before one block at one level (`errors[block, level]`),
    measured on `feeds`; and what any combination of rates (`Keeps`) costs, counted on a reduced copy."""

    model: ir.Model
    base: TokenSchedule
    blocks: tuple[int, ...]
    dims: dict[str, int] | None
    feeds: list[dict]
    errors: dict[tuple[int, float], float] = field(default_factory=dict)
    dense: list = field(default_factory=list)
    _factors: dict[tuple[float, ...], tuple[dict[int, float], float]] = field(default_factory=dict)
    _dense_macs: dict[int, float] = field(default_factory=dict)  # id(node) → its MACs at dims (nodes with some)

    @property
    def levels(self) -> tuple[float, ...]:
        return LEVELS[self.base.method]

    def full(self) -> Keeps:
        return dict.fromkeys(self.blocks, 1.0)

    def schedule(self, keeps: Keeps) -> TokenSchedule:
        """The schedule of these rates (a block kept whole gets no reduction ops)."""
        reducing = tuple(b for b in self.blocks if keeps[b] < 1) or self.blocks
        return replace(self.base, keep=tuple(keeps[b] for b in reducing), blocks=reducing)

    def reduced(self, keeps: Keeps) -> tuple[ir.Model, dict[int, ir.Node]]:
        """A copy of the model reduced as `schedule(keeps)` writes it (nothing inserted where every block keeps all
        its tokens), and id(node of the model) → that node in the copy."""
        copy = copy_model(self.model)
        twins = dict(zip(map(id, ir.traversal.RecursiveGraphIterator(self.model.graph)),
                         ir.traversal.RecursiveGraphIterator(copy.graph), strict=True))
        if any(keeps[b] < 1 for b in self.blocks):
            insert_token_reduction(copy, self.schedule(keeps))
        return copy, twins

    def error_of(self, keeps: Keeps) -> float:
        session = runtime.session(self.reduced(keeps)[0])
        return squared_error_ratio(self.dense, [runtime.run(session, f) for f in self.feeds], self.feeds)

    def factors(self, keeps: Keeps) -> tuple[dict[int, float], float]:
        """Per node of the model (id) the fraction of its MACs left at these rates, and the MACs of the ops the
        reduction inserts: a node's MACs are a product of its width and token sizes, so width pruning scales them
        independently (`joint.py`)."""
        key = tuple(keeps[b] for b in self.blocks)
        if not self._dense_macs:
            nodes = ir.traversal.RecursiveGraphIterator(self.model.graph)
            self._dense_macs.update((id(n), m) for n in nodes if (m := node_macs(n).evaluate(self.dims)))
        if key not in self._factors:
            copy, twins = self.reduced(keeps)
            factors = {node: node_macs(twins[node]).evaluate(self.dims) / dense
                       for node, dense in self._dense_macs.items()}
            kept = set(map(id, twins.values()))
            inserted = sum(node_macs(n).evaluate(self.dims) for n in ir.traversal.RecursiveGraphIterator(copy.graph)
                           if id(n) not in kept)
            self._factors[key] = factors, inserted
        return self._factors[key]


def measure_tokens(model: ir.Model, base: TokenSchedule, dims: dict[str, int] | None,
                   feeds: list[dict]) -> TokenSensitivity:
    """The output error on `feeds` of reducing the tokens before each of `base`'s blocks (else every eligible
    one) at each level, one block at a time; refused, with the reasons, when no block can reduce its tokens."""
    flow = find_token_flow(model, base.protect)
    blocks = base.blocks or tuple(site.block for site in flow.eligible())
    replace(base, keep=1.0, blocks=blocks or None).chosen(flow)
    _check_length(model, flow.tokens, dims, feeds)
    dense_session = runtime.session(model)
    sensitivity = TokenSensitivity(model, base, blocks, dims, feeds,
                                   dense=[runtime.run(dense_session, f) for f in feeds])
    pairs = [(block, level) for block in blocks for level in sensitivity.levels]
    with progress.step("measuring token sensitivity"):
        for block, level in progress.iterate(pairs, "measuring", "rate"):
            sensitivity.errors[block, level] = sensitivity.error_of({**sensitivity.full(), block: level})
    return sensitivity


def _check_length(model: ir.Model, tokens: object, dims: dict[str, int] | None, feeds: list[dict]) -> None:
    """Warn when the measuring inputs are not as long as the sequence the MACs are counted at: the error of
    dropping a share of the tokens depends on how many there are (and how many of them are padding)."""
    counted = (dims or {}).get(tokens) if isinstance(tokens, str) else None
    if counted is None:
        return
    lengths = sorted({feed[value.name].shape[axis] for feed in feeds for value in model.graph.inputs
                      if value.name in feed and value.shape is not None
                      for axis, size in enumerate(value.shape) if str(size) == tokens})
    if lengths and lengths != [counted]:
        span = f"{lengths[0]}" if len(lengths) == 1 else f"{lengths[0]}–{lengths[-1]}"
        log.warning("token rates are measured on rows of %s tokens but the MACs are counted at %s=%d: the error "
                    "of dropping tokens depends on the length; calibrate at the length you serve "
                    "(--calib-length %d, with --calib-pack for documents)", span, tokens, counted, counted)


def measured_tokens(model: ir.Model, base: TokenSchedule, target: float, dims: dict[str, int] | None,
                    feeds: list[dict]) -> TokenChoice:
    """The per-block keep rates (over `base`'s blocks, else every eligible block) that bring `model`'s MACs to
    `target` × the dense model's at least error per MAC saved on `feeds`."""
    tokens = measure_tokens(model, base, dims, feeds)
    dense_macs = cost(model, None, dims).macs

    def macs_of(keeps: Keeps) -> float:
        return cost(tokens.reduced(keeps)[0], None, dims).macs / dense_macs

    keeps, current = tokens.full(), 1.0
    while current > target:
        best = None
        for block, lower in next_levels(tokens, keeps):
            trial = {**keeps, block: lower}
            saved = current - macs_of(trial)
            per_mac = step_error(tokens, keeps, block, lower) / saved if saved > 0 else None
            if per_mac is not None and (best is None or per_mac < best[0]):
                best = (per_mac, trial, current - saved)
        if best is None:
            raise GraphpruneError(f"--tokens auto --target-flops {target:g}: token reduction alone reaches "
                                  f"{current:.3f} of the MACs at the lowest rates ({tokens.levels[-1]:g} before "
                                  f"every eligible block: {', '.join(map(str, tokens.blocks))})")
        _, keeps, current = best
    log.info("token rates chosen: %s (MACs %.3f)", ", ".join(f"block {b}: {keeps[b]:g}" for b in tokens.blocks),
             current)
    return TokenChoice(tokens.schedule(keeps), current, tokens.error_of(keeps), len(tokens.errors) + 1)


def next_levels(tokens: TokenSensitivity, keeps: Keeps) -> list[tuple[int, float]]:
    """(block, the next measured level below its rate) for every block that can go lower."""
    steps = []
    for block in tokens.blocks:
        lower = [level for level in tokens.levels if level < keeps[block]]
        if lower:
            steps.append((block, lower[0]))
    return steps


def step_error(tokens: TokenSensitivity, keeps: Keeps, block: int, level: float) -> float:
    """The measured error one more step of `block` (to `level`) adds, never negative."""
    return max(0.0, tokens.errors[block, level] - tokens.errors.get((block, keeps[block]), 0.0))
