"""The token-axis rule registry: how the sequence (token) axis of a transformer's hidden states maps through an op.

Token reduction keeps a subset of the tokens from some block on; every op downstream must compute the same thing
for the kept tokens with fewer of them. A rule gets the token axes of a node's reduced inputs and answers with its
outputs' token axes, the outside inputs that must be gathered with the tokens (masks, position tables), the shape
entries to rewrite, or the reason it cannot follow. Ops without a rule stop token reduction upstream of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np
import onnx_ir as ir

from graphprune.ir.values import attr_int, const_of, int_list
from graphprune.ops.layout import align_blocks

Axes = frozenset  # frozenset[int]: the token axes of one tensor


@dataclass
class TokenStep:
    """A rule's answer: token axes per output index; outside inputs to gather (input index → their token axes);
    the output axis of a Reshape/Expand whose shape entry holds the token count (times the sizes of the other
    `entry_axes` of the data, where the tokens are merged with them); `pooled` when the op reads
    the token axis away (mean pooling, a protected leading token picked); `sizes` when the outputs are sizes read
    from the reduced tokens (which may then only feed Reshape targets)."""

    outputs: dict[int, Axes] = field(default_factory=dict)
    gathers: dict[int, Axes] = field(default_factory=dict)
    shape_entry: int | None = None
    entry_axes: tuple[int, ...] | None = None  # the data axes whose sizes multiply to it (None: the token count)
    pooled: str | None = None
    sizes: bool = False


class TokenContext(Protocol):
    """What a token rule may ask: shapes, constants, the token count, how many leading tokens are protected."""

    def shape(self, value: ir.Value | None) -> list | None: ...
    def is_tokens(self, size: object) -> bool: ...  # size is the original token count
    def protected(self) -> int: ...


TokenRule = Callable[[ir.Node, dict[int, Axes], TokenContext], "TokenStep | str"]
TOKEN_RULES: dict[str, TokenRule] = {}


def token_rule(*op_types: str) -> Callable[[TokenRule], TokenRule]:
    """Register a token rule for these op types (default domain)."""
    def register(rule: TokenRule) -> TokenRule:
        for op_type in op_types:
            TOKEN_RULES[op_type] = rule
        return rule
    return register


def rule_for(op_type: str, domain: str = "") -> TokenRule | None:
    """The token rule of an op (default domain only), None where token reduction stops at it."""
    return TOKEN_RULES.get(op_type) if domain in ("", "ai.onnx") else None


def follow(node: ir.Node, axes: dict[int, Axes], ctx: TokenContext) -> TokenStep | str:
    """The rule's answer for `node`, or why there is none (a rule that raises is such a reason)."""
    rule = rule_for(node.op_type, node.domain)
    if rule is None:
        return f"{node.op_type} ({node.domain or 'ai.onnx'}) has no token rule"
    try:
        return rule(node, axes, ctx)
    except Exception as exc:  # noqa: BLE001 - a rule failing on a form it does not expect stops there, no crash
        return f"{node.op_type}: token rule {rule.__name__.lstrip('_')} cannot model this form ({exc})"


def _rank(ctx: TokenContext, value: ir.Value | None) -> int | None:
    shape = ctx.shape(value)
    return None if shape is None else len(shape)


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


@token_rule("Relu", "Gelu", "Erf", "Tanh", "Sigmoid", "Sqrt", "Neg", "Exp", "Log", "Abs", "Cast", "Identity",
            "Softplus", "Softsign", "HardSigmoid", "HardSwish", "Reciprocal", "Elu", "LeakyRelu", "Selu", "Mish",
            "Dropout", "Clip", "Sin", "Cos", "Not", "Sign", "IsNaN", "IsInf", "Floor", "Ceil", "Round", "CastLike",
            "Softmax", "LogSoftmax")
def _elementwise_unary(node: ir.Node, axes: dict[int, Axes], ctx: TokenContext) -> TokenStep | str:
    """Per element (Softmax too: normalising over the key axis is what attention does, and over the kept keys it
    stays a distribution)."""
    if set(axes) != {0}:
        return f"{node.op_type}: the reduced tensor is not its data input"
    return TokenStep({0: axes[0]})


@token_rule("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Where", "Equal", "Less", "Greater", "LessOrEqual",
            "GreaterOrEqual", "And", "Or", "PRelu", "Mod")
def _broadcast(node: ir.Node, axes: dict[int, Axes], ctx: TokenContext) -> TokenStep | str:
    """Broadcasting ops: the output's token axes are the reduced inputs' (right-aligned); an outside input that
    is per token (its aligned axis holds the token count: a mask, a position table) is gathered with them."""
    out_rank = _rank(ctx, node.outputs[0])
    if out_rank is None:
        return f"{node.op_type}: output rank unknown"
    out_axes: set[int] = set()
    for index, found in axes.items():
        shift = out_rank - _rank(ctx, node.inputs[index])
        out_axes |= {a + shift for a in found}
    step = TokenStep({0: Axes(out_axes)})
    for index, value in enumerate(node.inputs):
        if value is None or index in axes:
            continue
        shape = ctx.shape(value)
        if shape is None:
            return f"{node.op_type}: input {index} has no known shape"
        shift = out_rank - len(shape)
        aligned = {a - shift for a in out_axes if a - shift >= 0}
        per_token = {a for a in aligned if shape[a] != 1}
        if any(not ctx.is_tokens(shape[a]) for a in per_token):
            return f"{node.op_type}: input {index} is neither per token nor broadcast over the token axis"
        if per_token:
            step.gathers[index] = Axes(per_token)
    return step


@token_rule("LayerNormalization", "RMSNormalization", "SimplifiedLayerNormalization")
def _layer_norm(node: ir.Node, axes: dict[int, Axes], ctx: TokenContext) -> TokenStep | str:
    rank = _rank(ctx, node.inputs[0])
    if set(axes) != {0} or rank is None:
        return f"{node.op_type}: only the data input may carry tokens"
    first = _axis(attr_int(node, "axis", -1), rank)
    if any(a >= first for a in axes[0]):
        return f"{node.op_type} normalises over the token axis"
    return TokenStep({0: axes[0]})


@token_rule("MatMul")
def _matmul(node: ir.Node, axes: dict[int, Axes], ctx: TokenContext) -> TokenStep | str:
    """[..., m, k] @ [..., k, n]: tokens on m, n or the batch axes carry over; a token contraction (attention's
    probabilities times values) needs tokens on both k axes, a weight never reads the token axis."""
    ranks = [_rank(ctx, v) for v in node.inputs]
    if None in ranks or min(ranks) < 2:
        return "MatMul: operand ranks unknown or below 2"
    out_rank = max(ranks)
    a_axes, b_axes = axes.get(0, Axes()), axes.get(1, Axes())
    a_k, b_k = ranks[0] - 1, ranks[1] - 2
    if (a_k in a_axes) != (b_k in b_axes):
        return "MatMul: a weight or an outside tensor contracts over the token axis"
    out: set[int] = {a + out_rank - ranks[0] for a in a_axes if a != a_k}
    out |= {(out_rank - 1) if a == ranks[1] - 1 else a + out_rank - ranks[1] for a in b_axes if a != b_k}
    for index in (0, 1):
        if index not in axes and any(ctx.is_tokens(s) for s in (ctx.shape(node.inputs[index]) or [])):
            return "MatMul: an outside operand has an axis of the token count"
    return TokenStep({0: Axes(out)})


@token_rule("Gemm")
def _gemm(node: ir.Node, axes: dict[int, Axes], ctx: TokenContext) -> TokenStep | str:
    """A linear layer over rows of tokens: A's rows carry them; the weight and the bias never do."""
    if set(axes) != {0} or axes[0] != Axes({0}) or attr_int(node, "transA", 0):
        return "Gemm: only the rows of A may carry tokens"
    if any(ctx.is_tokens(s) for v in node.inputs[1:] for s in (ctx.shape(v) or [])):
        return "Gemm: the weight or the bias has an axis of the token count"
    return TokenStep({0: Axes({0})})


@token_rule("Transpose")
def _transpose(node: ir.Node, axes: dict[int, Axes], ctx: TokenContext) -> TokenStep | str:
    rank = _rank(ctx, node.inputs[0])
    perm = list(node.attributes["perm"].as_ints()) if "perm" in node.attributes else list(range(rank or 0))[::-1]
    return TokenStep({0: Axes(perm.index(a) for a in axes[0])})


@token_rule("Unsqueeze", "Squeeze")
def _unsqueeze(node: ir.Node, axes: dict[int, Axes], ctx: TokenContext) -> TokenStep | str:
    rank, out_rank = _rank(ctx, node.inputs[0]), _rank(ctx, node.outputs[0])
    listed = int_list(node, "axes", 1)
    if rank is None or out_rank is None or (listed is None and node.op_type == "Unsqueeze"):
        return f"{node.op_type}: axes or ranks unknown"
    if node.op_type == "Unsqueeze":
        inserted = sorted(_axis(a, out_rank) for a in listed)
        kept = [a for a in range(out_rank) if a not in inserted]
        return TokenStep({0: Axes(kept[a] for a in axes[0])})
    shape = ctx.shape(node.inputs[0])
    removed = {_axis(a, rank) for a in listed} if listed is not None else {a for a, s in enumerate(shape) if s == 1}
    kept = [a for a in range(rank) if a not in removed]
    return TokenStep({0: Axes(kept.index(a) for a in axes[0] if a in kept)})


def _same_size(a: list, b: list) -> bool:
    """Whether two lists of sizes multiply to the same size (static product and symbolic names compared)."""
    def split(sizes: list) -> tuple[int, list] | None:
        if any(s is None for s in sizes):
            return None
        static = [s for s in sizes if isinstance(s, int)]
        return int(np.prod(static)) if static else 1, sorted(str(s) for s in sizes if not isinstance(s, int))
    left, right = split(a), split(b)
    return left is not None and left == right


@token_rule("Reshape")
def _reshape(node: ir.Node, axes: dict[int, Axes], ctx: TokenContext) -> TokenStep | str:
    """A Reshape that keeps the token axis whole, merges it as the outermost factor with the axes after it (rows
    of tokens × batch, as torch's attention writes before its output projection) or splits such a merged axis
    back with the tokens outermost; its shape entry there is rewritten to the reduced size."""
    if set(axes) != {0} or len(axes[0]) != 1:
        return "Reshape: the token axis must reach its data input once"
    (axis,) = axes[0]
    before, after = ctx.shape(node.inputs[0]), ctx.shape(node.outputs[0])
    if before is None or after is None:
        return "Reshape: shapes unknown"
    for out_axis, size in enumerate(after):
        if ctx.is_tokens(size) and _same_size(before[:axis], after[:out_axis]):
            entry = (axis,) if ctx.is_tokens(before[axis]) else None  # None: a merged axis split, tokens outermost
            return TokenStep({0: Axes({out_axis})}, shape_entry=out_axis, entry_axes=entry)
    block = next((b for b in align_blocks(before, after) or [] if axis in b[0]), None)
    if block is not None and block[0][0] == axis and len(block[1]) == 1 and ctx.is_tokens(before[axis]):
        return TokenStep({0: Axes(block[1])}, shape_entry=block[1][0], entry_axes=tuple(block[0]))
    return "Reshape merges the token axis under another or splits it"


@token_rule("Split")
def _split(node: ir.Node, axes: dict[int, Axes], ctx: TokenContext) -> TokenStep | str:
    rank = _rank(ctx, node.inputs[0])
    if set(axes) != {0} or rank is None or _axis(attr_int(node, "axis", 0), rank) in axes[0]:
        return "Split splits the token axis"
    return TokenStep({i: axes[0] for i in range(len(node.outputs))})


@token_rule("Slice")
def _slice(node: ir.Node, axes: dict[int, Axes], ctx: TokenContext) -> TokenStep | str:
    """Slices over other axes carry the tokens; one over the token axis may only take protected leading tokens."""
    rank = _rank(ctx, node.inputs[0])
    bounds = [const_of(v) for v in node.inputs[1:]]
    if set(axes) != {0} or rank is None or len(bounds) < 2 or any(b is None for b in bounds):
        return "Slice: bounds not constant"
    starts, ends = (b.reshape(-1) for b in bounds[:2])
    sliced = [_axis(int(a), rank) for a in (bounds[2].reshape(-1) if len(bounds) > 2 else range(len(starts)))]
    step = TokenStep({0: axes[0]})
    for axis, start, end in zip(sliced, starts, ends, strict=False):
        if axis not in axes[0]:
            continue
        if start == 0 and end >= np.iinfo(np.int64).max // 2:
            continue
        if start == 0 and 0 < end <= ctx.protected():
            step.outputs[0] = Axes(axes[0] - {axis})
            step.pooled = f"Slice takes the first {int(end)} token(s)"
            continue
        return "Slice cuts the token axis elsewhere than its protected leading tokens"
    return step


@token_rule("Gather")
def _gather(node: ir.Node, axes: dict[int, Axes], ctx: TokenContext) -> TokenStep | str:
    """Gathering protected leading tokens (CLS pooling) reads the token axis away; other axes carry it."""
    rank, indices = _rank(ctx, node.inputs[0]), const_of(node.inputs[1])
    if set(axes) != {0} or rank is None or indices is None:
        return "Gather: only constant indices into the reduced data are followed"
    axis, extra = _axis(attr_int(node, "axis", 0), rank), indices.ndim
    if axis in axes[0]:
        if not np.all((indices >= 0) & (indices < ctx.protected())):
            return "Gather picks tokens that are not protected leading tokens (--token-protect)"
        kept = {a if a < axis else a + extra - 1 for a in axes[0] - {axis}}
        return TokenStep({0: Axes(kept)}, pooled=f"Gather takes token(s) {sorted(set(indices.reshape(-1).tolist()))}")
    return TokenStep({0: Axes(a if a < axis else a + extra - 1 for a in axes[0])})


@token_rule("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL2")
def _reduce(node: ir.Node, axes: dict[int, Axes], ctx: TokenContext) -> TokenStep | str:
    """A reduction over tokens pools them (mean pooling over the kept tokens); over other axes it carries them."""
    rank = _rank(ctx, node.inputs[0])
    listed = int_list(node, "axes", 1)
    if set(axes) != {0} or rank is None or listed is None:
        return f"{node.op_type}: axes unknown"
    reduced = {_axis(a, rank) for a in listed}
    keep = attr_int(node, "keepdims", 1)
    out = {a if keep else a - sum(r < a for r in reduced) for a in axes[0] - reduced}
    pooled = f"{node.op_type} pools the tokens" if axes[0] & reduced else None
    return TokenStep({0: Axes(out)}, pooled=pooled)


@token_rule("Concat")
def _concat(node: ir.Node, axes: dict[int, Axes], ctx: TokenContext) -> TokenStep | str:
    rank = _rank(ctx, node.outputs[0])
    found = set(axes.values())
    if rank is None or len(found) != 1 or len(axes) != len(node.inputs):
        return "Concat joins reduced and outside tensors"
    (token_axes,) = found
    if _axis(attr_int(node, "axis", 0), rank) in token_axes:
        return "Concat adds tokens"
    return TokenStep({0: token_axes})


@token_rule("Shape", "Size")
def _shape(node: ir.Node, axes: dict[int, Axes], ctx: TokenContext) -> TokenStep | str:
    """Sizes read at run time are the reduced ones; what uses them is checked where it meets the tokens."""
    return TokenStep(sizes=True)
