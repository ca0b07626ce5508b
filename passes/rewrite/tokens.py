"""Token reduction compiled into the graph: before chosen blocks, keep the tokens the previous block's attention
ranks highest (EViT / Zero-TPrune-style importance) or merge the most similar ones (ToMe, `token_merge.py`), in
their original order, with every per-token tensor the blocks read (masks, position tables) gathered alike and
shape entries rewritten to the reduced count. Methods and scores are registries (`TOKEN_METHODS`, `TOKEN_SCORES`).

Per-token outputs keep their shape: dropped tokens are restored where the residual stream ends, from the kept
token standing for them (or their value when dropped). A keep rate of 1 computes exactly the original outputs.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from graphprune.analysis.tokens import TOKEN_AXIS, TokenFlow, TokenSite, find_token_flow
from graphprune.errors import GraphpruneError
from graphprune.ir.values import const_of, is_constant, shape_of
from graphprune.ops.layout import size_product
from graphprune.ops.tokens import TokenStep
from graphprune.passes.rewrite.token_graph import INT64_MAX, Reduction, TokenBuilder
from graphprune.passes.rewrite.token_merge import merge, merged_count


@dataclass(frozen=True)
class TokenSchedule:
    """Keep `keep` of the tokens before each of `blocks` (None: a quarter, half and three quarters down the
    stack, as EViT places them), ranked by `score` (`method` "topk"), or merged in pairs of most similar tokens
    ("merge", ToMe, with proportional attention); the first `protect` tokens (CLS) are always kept. A
    per-token output gets each dropped token back as `restore` says: "nearest", the final value of the kept
    token it was most similar to (cosine) when dropped; "dropped", its own value when dropped."""

    keep: float | tuple[float, ...]  # one rate for every block, or one per block of `blocks`
    blocks: tuple[int, ...] | None = None
    score: str = "received"
    protect: int = 1
    restore: str = "nearest"
    method: str = "topk"

    @classmethod
    def of(cls, recorded: dict) -> TokenSchedule:
        """The schedule a plan recorded."""
        blocks, keep = recorded.get("blocks"), recorded["keep"]
        return cls(tuple(keep) if isinstance(keep, list) else keep, tuple(blocks) if blocks else None,
                   recorded.get("score", "received"), recorded.get("protect", 1), recorded.get("restore", "nearest"),
                   recorded.get("method", "topk"))

    @classmethod
    def planned(cls, meta: dict) -> TokenSchedule | None:
        """The schedule a plan's metadata carries, if it reduces tokens."""
        recorded = (meta.get("tokens") or {}).get("schedule")
        return cls.of(recorded) if recorded else None

    def rates(self) -> tuple[float, ...]:
        return self.keep if isinstance(self.keep, tuple) else (self.keep,)

    def keep_at(self, position: int) -> float:
        """The keep rate at the `position`-th chosen site."""
        return self.keep[position] if isinstance(self.keep, tuple) else self.keep

    def check(self) -> None:
        if isinstance(self.keep, tuple) and (self.blocks is None or len(self.blocks) != len(self.keep)):
            raise GraphpruneError("per-block keep rates need --token-blocks, one block per rate")
        if not all(0 < k <= 1 for k in self.rates()):
            raise GraphpruneError(f"--tokens {self.keep}: the fraction of tokens kept must be in (0, 1]")
        if self.method not in TOKEN_METHODS:
            raise GraphpruneError(f"--token-method {self.method}: choose one of {', '.join(TOKEN_METHODS)}")
        if self.method == "merge" and min(self.rates()) < 0.5:
            raise GraphpruneError(f"--tokens {self.keep} with --token-method merge: one merge removes at most half "
                                  "the tokens; keep 0.5 or more per block (or use topk)")
        if self.restore not in RESTORES:
            raise GraphpruneError(f"--token-restore {self.restore}: choose one of {', '.join(RESTORES)}")
        if self.score not in TOKEN_SCORES:
            raise GraphpruneError(f"--token-score {self.score}: choose one of {', '.join(TOKEN_SCORES)}")
        if self.protect < 0 or any(b < 1 for b in self.blocks or ()):
            raise GraphpruneError("--token-protect must be >= 0 and --token-blocks >= 1 (block 0 has no "
                                  "attention before it to rank tokens by)")

    def kept(self, count: int | str, keep: float) -> int | str:
        """Tokens kept of `count`: max(protect, floor(count · keep + 1/2)) (a merge keeps at least the protected
        and unmatched half); for a symbolic count, that expression (which the MACs formula evaluates at --dim)."""
        if self.method == "merge":
            return merged_count(count, keep, self.protect)
        if isinstance(count, int):
            return max(self.protect, math.floor(count * keep + 0.5))
        return f"max({self.protect}, floor(({count})*{keep!r} + 1/2))"

    def chosen(self, flow: TokenFlow) -> list[TokenSite]:
        """The sites this schedule reduces at, refusing an ineligible block with its reason."""
        if flow.reason is not None:
            raise GraphpruneError(f"--tokens: {flow.reason}")
        if flow.opset < MIN_OPSET[self.method]:
            raise GraphpruneError(f"--token-method {self.method} needs opset {MIN_OPSET[self.method]} or newer "
                                  f"(the model has {flow.opset}; merging scatters with a reduction, opset 16)")
        blocks = self.blocks or tuple(sorted({max(1, round(flow.blocks * f)) for f in (0.25, 0.5, 0.75)}
                                             & set(range(1, flow.blocks))))
        sites = []
        for block in blocks:
            site = flow.site(block)
            if site is None:
                raise GraphpruneError(f"--token-blocks {block}: the model has blocks 0..{flow.blocks - 1}, and "
                                      "block 0 has no attention before it")
            if site.reason is not None and self.blocks is not None:
                raise GraphpruneError(f"--token-blocks {block}: tokens cannot be reduced there: {site.reason}")
            if site.reason is None:
                sites.append(site)
        if not sites:
            why = "; ".join(f"block {s.block}: {s.reason}" for s in flow.sites[:3]) or "the model has one block"
            raise GraphpruneError(f"--tokens: no block can reduce its tokens: {why}")
        return sites


@dataclass
class TokenReport:
    """What was inserted: per site its block and kept count (an int, or an expression in the symbolic count), what
    reads the tokens away, where dropped tokens are restored."""

    sites: list[dict] = field(default_factory=list)
    pooled: list[str] = field(default_factory=list)
    restored: list[str] = field(default_factory=list)

    def as_meta(self) -> dict:
        return {"sites": self.sites, "pooled": self.pooled, "restored": self.restored}


def _received(b: TokenBuilder, attention: ir.Value) -> ir.Value:
    """Attention each token receives, averaged over heads and queries (Zero-TPrune's in-degree, one step)."""
    return b.reduce_mean(attention, [1, 2])


def _cls(b: TokenBuilder, attention: ir.Value) -> ir.Value:
    """Attention from the first token (CLS) to each token, averaged over heads (EViT)."""
    return b.reduce_mean(b.op("Gather", attention, b.const(0), axis=2), [1])


TOKEN_SCORES: dict[str, Callable[[TokenBuilder, ir.Value], ir.Value]] = {"received": _received, "cls": _cls}


def insert_token_reduction(model: ir.Model, schedule: TokenSchedule, flow: TokenFlow | None = None) -> TokenReport:
    """Insert `schedule`'s token reduction into `model` in place; returns what was inserted."""
    schedule.check()
    flow = flow or find_token_flow(model, schedule.protect)
    sites = schedule.chosen(flow)
    means = [p for p in sites[0].walk.pooled if p.startswith(("ReduceMean", "ReduceSum"))]
    if schedule.method == "merge" and means:
        raise GraphpruneError(f"--token-method merge: {means[0]}, and a mean over merged tokens would need their "
                              "sizes (not modelled); use --token-method topk")
    b, report = TokenBuilder(model, sites[0].hidden.dtype or ir.DataType.FLOAT), TokenReport()
    restores = {output: _restore_point(output, sites[-1]) for output in sites[0].walk.outputs}
    after = _downstream({point for point in restores.values()}, sites[-1])
    level = {node: site for site in sites for node in site.walk.steps if node not in after}
    new_inputs: dict[tuple[ir.Node, int], ir.Value] = {}
    kept: dict[int, tuple[ir.Value, ir.Value | None]] = {}
    total, count, sizes = None, flow.tokens, None
    for n, site in enumerate(sites):
        mask = new_inputs.get(site.mask, site.mask[0].inputs[site.mask[1]]) if site.mask else None
        reduction = TOKEN_METHODS[schedule.method](b, site, schedule, schedule.keep_at(n), mask, count, sizes)
        before, count, sizes = count, reduction.kept, reduction.sizes
        total = reduction.index if total is None else b.op("GatherElements", total, reduction.index, axis=1)
        kept[site.block] = reduction.index, reduction.nearest
        size = count if isinstance(count, int) else ir.SymbolicDim(count)
        _declare(reduction.hidden, site.hidden, size)
        for node, i in list(site.hidden.uses()):
            if node in site.walk.steps:
                node.replace_input_with(i, reduction.hidden)
        for node, step in site.walk.steps.items():
            if level.get(node) is site:
                _fix_node(b, node, step, total, count, site, sites, new_inputs)
                _resize(node, site, before, size)
        if sizes is not None:  # proportional attention in the blocks up to the next site
            end = sites[n + 1].block if n + 1 < len(sites) else flow.blocks
            log_sizes = b.op("Unsqueeze", b.op("Log", sizes), b.const([1, 2]))
            for softmax in flow.attentions[site.block:end]:
                softmax.replace_input_with(0, b.op("Add", softmax.inputs[0], log_sizes))
        report.sites.append({"block": site.block, "keep": schedule.keep_at(n), "before": before, "kept": count})
    report.pooled = sorted(set(sites[-1].walk.pooled))
    for output, point in restores.items():
        report.restored.append(output.name if point is output else f"{output.name} (at {point.name})")
        _restore(b, point, sites, kept)
    model.graph.sort()
    RemoveUnusedNodesPass()(model)
    return report


def _downstream(points: set[ir.Value], site: TokenSite) -> set[ir.Node]:
    """The nodes after the restore points: they see every token again, so must read no other reduced tensor."""
    nodes, reached = set(), set(points)
    for node in site.walk.steps:
        carried = [v for v in node.inputs if v in site.walk.axes]
        if any(v in reached for v in carried):
            if not all(v in reached for v in carried):
                raise GraphpruneError(f"--tokens: {node.op_type} ({node.name}) after the restore point also "
                                      "reads reduced tokens")
            nodes.add(node)
            reached.update(node.outputs)
    return nodes


def _declare(reduced: ir.Value, hidden: ir.Value, size: int | ir.SymbolicDim) -> None:
    """Give the reduced hidden states the block input's type and shape at the reduced count (the MACs of the
    layers reading them are counted from it)."""
    reduced.dtype = reduced.dtype or hidden.dtype
    if reduced.shape is None and hidden.shape is not None:
        dims = list(hidden.shape)
        dims[TOKEN_AXIS] = size
        reduced.shape = ir.Shape(dims)


def _resize(node: ir.Node, site: TokenSite, before: object, size: int | ir.SymbolicDim) -> None:
    """Declare the reduced token count on the token axes of the node's outputs (`before`: the count there was)."""
    for value in node.outputs:
        axes = site.walk.axes.get(value)
        if axes and value.shape is not None:
            dims = list(value.shape)
            for axis in axes:
                dims[axis] = _resized(dims[axis], before, size)
            value.shape = ir.Shape(dims)


def _resized(dim: int | ir.SymbolicDim, before: object, size: int | ir.SymbolicDim) -> int | ir.SymbolicDim:
    """A token axis's size at the reduced count: where the tokens are merged with other axes (rows of tokens ×
    batch, its size a product with the count as a factor) the count times the rest, else the count."""
    value = dim.value if isinstance(dim, ir.SymbolicDim) else dim
    if value == before:
        return size
    count = f"({size.value})" if isinstance(size, ir.SymbolicDim) else str(size)
    if isinstance(value, str) and value.startswith(f"({before})*"):  # merged at an earlier site, as written here
        return ir.SymbolicDim(count + value[len(f"({before})"):])
    whole, tokens = size_product(value), size_product(before)
    if whole is None or tokens is None or whole[0] % tokens[0] or not Counter(tokens[1]) <= Counter(whole[1]):
        return size
    constant, symbols = whole[0] // tokens[0], list((Counter(whole[1]) - Counter(tokens[1])).elements())
    if not symbols and isinstance(size, int):
        return constant * size
    return ir.SymbolicDim("*".join([count, *([str(constant)] if constant != 1 else []), *symbols]))


def _choose(b: TokenBuilder, site: TokenSite, schedule: TokenSchedule, keep: float, mask: ir.Value | None,
            count: object) -> ir.Value:
    """Indices [batch, k] of the kept tokens, ascending: the top k by score, protected tokens first and padding
    (a masked key) last."""
    scores = TOKEN_SCORES[schedule.score](b, site.attention)
    if mask is not None:
        scores = b.op("Add", scores, b.to_float(b.key_padding(mask)))
    length = b.dim(site.hidden, TOKEN_AXIS)
    if schedule.protect:
        top = b.float_const(float(np.finfo(b.float_type.numpy()).max))
        scores = b.op("Where", b.op("Less", b.positions(length), b.const(schedule.protect)), top, scores)
    k = b.const([schedule.kept(count, keep)]) if isinstance(count, int) else \
        b.kept_count(length, keep, schedule.protect)
    _, picked = b.topk(scores, k, largest=1, sorted=0)
    ascending, _ = b.topk(picked, k, largest=0)
    return ascending


def _fix_node(b: TokenBuilder, node: ir.Node, step: TokenStep, total: ir.Value, count: object, site: TokenSite,
              sites: list[TokenSite], new_inputs: dict) -> None:
    """Gather the node's per-token outside inputs with the kept tokens, rewrite its shape entry."""
    for index, token_axes in step.gathers.items():
        value = node.inputs[index]
        if any(value in s.walk.axes for s in sites if s is not site):
            raise GraphpruneError(f"--tokens: {node.op_type} ({node.name}) joins tokens reduced at different "
                                  "blocks (a tensor skips past a reduction)")
        key = (value, site.block, token_axes)  # one mask read by every layer is gathered once per site
        if key not in b.gathered:
            rank, gathered = len(shape_of(value)), value
            for axis in sorted(token_axes):
                gathered = b.gather(gathered, axis, total, rank)
            b.gathered[key] = gathered
        node.replace_input_with(index, b.gathered[key])
        new_inputs[(node, index)] = b.gathered[key]
    if step.shape_entry is not None:
        node.replace_input_with(1, _shape_with(b, node, step, total, count))


def _shape_with(b: TokenBuilder, node: ir.Node, step: TokenStep, total: ir.Value, count: object) -> ir.Value:
    """The node's shape input with its token entry set to the reduced size: the kept count, or the product of the
    data axes merged there (a constant when it is known; an entry of -1 is left to infer)."""
    shape, entry, data = node.inputs[1], step.shape_entry, node.inputs[0]
    constant, merged = const_of(shape), step.entry_axes is not None and len(step.entry_axes) > 1
    if constant is not None and merged and constant[entry] == -1:
        return shape
    others = [shape_of(data)[a] for a in (step.entry_axes or ())[1:]]
    if constant is not None and isinstance(count, int) and all(isinstance(o, int) for o in others):
        fixed = constant.copy()
        fixed[entry] = count * math.prod(others)
        return b.const(fixed)
    if step.entry_axes is None:  # the kept count: the length of the composed indices [batch, k]
        size = b.dim(total, 1)
    else:
        size = b.dim(data, step.entry_axes[0])
        for axis in step.entry_axes[1:]:
            size = b.op("Mul", size, b.dim(data, axis))
    return b.op("Concat", b.op("Slice", shape, b.const([0]), b.const([entry])), size,
                b.op("Slice", shape, b.const([entry + 1]), b.const([INT64_MAX])), axis=0)


def _kind(value: ir.Value) -> tuple[str, int] | None:
    producer = value.producer()
    return None if producer is None else (producer.op_type, sum(not is_constant(i) for i in producer.inputs))


def _restore_point(output: ir.Value, last: TokenSite) -> ir.Value:
    """Where dropped tokens go back for a per-token output: the last value on the way to it that is of the
    sites' own kind and width (the residual stream where it ends: a head's bias Add after it is of the kind of
    a decomposed LayerNorm's, not of its width), else the output itself."""
    value, width = output, (shape_of(last.hidden) or [None])[-1]
    for _ in range(64):
        if _kind(value) == _kind(last.hidden) and last.walk.axes.get(value) == frozenset({TOKEN_AXIS}) and \
                (shape_of(value) or [None])[-1] == width:
            return value
        producer = value.producer()
        carriers = [i for i in producer.inputs if i in last.walk.axes] if producer is not None else []
        if len(carriers) != 1:
            break
        value = carriers[0]
    if last.walk.axes.get(output) != frozenset({TOKEN_AXIS}) or len(shape_of(output) or ()) != 3:
        raise GraphpruneError(f"--tokens: output {output.name} is per token and cannot be restored (its tokens "
                              "are not on the residual stream's axis)")
    return output


def _top_k(b: TokenBuilder, site: TokenSite, schedule: TokenSchedule, keep: float, mask: ir.Value | None,
           count: int | str, sizes: ir.Value | None) -> Reduction:
    """Keep the top tokens by attention score; restore from the nearest kept token or the dropped value."""
    index = _choose(b, site, schedule, keep, mask, count)
    hidden = b.gather(site.hidden, TOKEN_AXIS, index, 3)
    nearest = _nearest_kept(b, site.hidden, hidden) if schedule.restore == "nearest" else None
    return Reduction(index, hidden, schedule.kept(count, keep), nearest)


def _merge(b: TokenBuilder, site: TokenSite, schedule: TokenSchedule, keep: float, mask: ir.Value | None,
           count: int | str, sizes: ir.Value | None) -> Reduction:
    """ToMe: merge the most similar tokens, sizes carried to proportional attention."""
    return merge(b, site.hidden, keep, schedule.protect, mask, count, sizes)


def _nearest_kept(b: TokenBuilder, hidden: ir.Value, reduced: ir.Value) -> ir.Value:
    """For each token of `hidden` [batch, n, d], the position among the kept `reduced` [batch, k, d] of the one
    most similar to it (cosine); a kept token is its own nearest."""
    unit, kept = (b.op("LpNormalization", x, axis=-1, p=2) for x in (hidden, reduced))
    return b.op("ArgMax", b.op("MatMul", unit, b.op("Transpose", kept, perm=[0, 2, 1])), axis=2, keepdims=0)


RESTORES = ("nearest", "dropped")
TOKEN_METHODS: dict[str, Callable[..., Reduction]] = {"topk": _top_k, "merge": _merge}
MIN_OPSET = {"topk": 13, "merge": 16}


def _restore(b: TokenBuilder, point: ir.Value, sites: list[TokenSite],
             kept: dict[int, tuple[ir.Value, ir.Value | None]]) -> None:
    """Scatter the kept tokens at `point` back over each site's input, latest first; what read `point` (and the
    graph output it may be) reads the full sequence."""
    readers = list(point.uses())
    full = point
    for site in reversed(sites):
        index, nearest = kept[site.block]
        dropped = site.hidden if nearest is None else b.gather(full, TOKEN_AXIS, nearest, 3)
        full = b.scatter(dropped, TOKEN_AXIS, index, full, 3)
    for node, i in readers:
        node.replace_input_with(i, full)
    graph = b.model.graph
    if point in graph.outputs:
        dims = list(point.shape)
        dims[TOKEN_AXIS] = sites[0].hidden.shape[TOKEN_AXIS]
        _rename_output(graph, list(graph.outputs).index(point), point, full, ir.Shape(dims))


def _rename_output(graph: ir.Graph, position: int, old: ir.Value, new: ir.Value, shape: ir.Shape) -> None:
    """Make `new` (of `shape`) the graph output `old` was, under the same name."""
    name = old.name
    old.name = f"{name}_reduced"
    new.name = name
    new.type, new.shape = old.type, shape
    graph.outputs[position] = new
