"""Where tokens flow: the blocks of a transformer, the token axis of its residual stream, and for each block whether
token reduction can be inserted before it — with the reason where it cannot.

A block is found from its attention: a Softmax over the product of two activations whose output multiplies the
values, and the residual Add that joins the block's input `h` (an ancestor of that Softmax) with what the
Softmax feeds. Reducing the tokens of `h` is followed op by op through `graphprune.ops.tokens`; anything those
rules cannot follow, a skip past the block, or a size computed from the reduced tokens used as data, makes the
site ineligible, never guessed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx_ir as ir

from graphprune.ir.values import is_constant, shape_of
from graphprune.ops.tokens import Axes, TokenStep, follow

TOKEN_AXIS = 1  # the residual stream is [batch, tokens, hidden]


@dataclass
class Walk:
    """What reducing the tokens of one value implies downstream: each reduced value's token axes, each node's
    step, pooling seen, per-token graph outputs; `reason` when it cannot be followed."""

    axes: dict[ir.Value, Axes] = field(default_factory=dict)
    steps: dict[ir.Node, TokenStep] = field(default_factory=dict)
    pooled: list[str] = field(default_factory=list)
    outputs: list[ir.Value] = field(default_factory=list)
    reason: str | None = None


@dataclass
class TokenSite:
    """Token reduction before block `block`: `hidden` is the block's input, `attention` the previous block's
    attention probabilities [batch, heads, queries, keys] (the importance), `mask` the previous block's
    additive padding mask [batch|1, 1, 1|queries, keys] (node, input index) where one is added to its logits."""

    block: int
    hidden: ir.Value
    attention: ir.Value
    mask: tuple[ir.Node, int] | None
    walk: Walk

    @property
    def reason(self) -> str | None:
        return self.walk.reason


@dataclass
class TokenFlow:
    """The blocks found (their count), the token count (on TOKEN_AXIS), and a site before every block after the
    first."""

    blocks: int
    tokens: object = None  # the token count as declared: an int or a symbolic name
    sites: list[TokenSite] = field(default_factory=list)
    reason: str | None = None  # why the model offers no site at all
    attentions: list[ir.Node] = field(default_factory=list)  # each block's attention Softmax, in order
    opset: int = 0  # the model's default-domain opset

    def eligible(self) -> list[TokenSite]:
        return [s for s in self.sites if s.reason is None]

    def site(self, block: int) -> TokenSite | None:
        return next((s for s in self.sites if s.block == block), None)


class _Context:
    """The TokenContext rules see."""

    def __init__(self, tokens: object, protect: int) -> None:
        self._tokens, self._protect = tokens, protect

    def shape(self, value: ir.Value | None) -> list | None:
        return shape_of(value)

    def is_tokens(self, size: object) -> bool:
        return size is not None and size == self._tokens

    def protected(self) -> int:
        return self._protect


def _ancestors(value: ir.Value) -> set[ir.Value]:
    seen, stack = set(), [value]
    while stack:
        v = stack.pop()
        if v in seen:
            continue
        seen.add(v)
        producer = v.producer()
        if producer is not None:
            stack.extend(i for i in producer.inputs if i is not None)
    return seen


def _attentions(graph: ir.Graph) -> list[tuple[ir.Node, set[ir.Value]]]:
    """Softmax nodes over the product of two activations whose output multiplies another activation, each with
    the values its logits are computed from."""
    found = []
    for node in graph:
        if node.op_type != "Softmax" or node.domain not in ("", "ai.onnx"):
            continue
        feeds_values = any(use.op_type == "MatMul" and idx == 0 and not is_constant(use.inputs[1])
                           for use, idx in _through_guards(node.outputs[0]))
        above = _ancestors(node.inputs[0])
        scored = any(v.producer() is not None and v.producer().op_type == "MatMul"
                     and not any(is_constant(i) for i in v.producer().inputs) for v in above)
        if feeds_values and scored:
            found.append((node, above))
    return found


GUARDS = ("Where", "IsNaN", "Cast", "Dropout", "Identity")  # what exporters put between Softmax and the values


def _through_guards(value: ir.Value, hops: int = 3) -> list[tuple[ir.Node, int]]:
    """The uses of `value`, and of what guard ops (SDPA's NaN guard, dropout) make of it, a few ops down."""
    uses = list(value.uses())
    for node, _ in list(uses):
        if node.op_type in GUARDS and hops:
            uses += _through_guards(node.outputs[0], hops - 1)
    return uses


def _residual_input(graph: ir.Graph, softmax: ir.Node, above: set[ir.Value],
                    order: dict[ir.Node, int]) -> ir.Value | None:
    """The block input `h` (one of the logits' sources, `above`) of the first residual Add after `softmax` that
    joins what the Softmax feeds with `h`."""
    below = {softmax.outputs[0]}
    for node in list(graph)[order[softmax] + 1:]:
        if any(i in below for i in node.inputs):
            if node.op_type == "Add" and len(node.inputs) == 2:
                a, b = node.inputs
                for inside, other in ((a, b), (b, a)):
                    if inside in below and other not in below and other in above and not is_constant(other):
                        return other
            below.update(node.outputs)
    return None


def _padding_mask(softmax: ir.Node, tokens: object) -> tuple[ir.Node, int] | None:
    """The additive mask [batch|1, 1, 1|tokens, tokens] on the logits of this Softmax, a few ops up."""
    value = softmax.inputs[0]
    for _ in range(4):
        node = value.producer() if value is not None else None
        if node is None or node.op_type not in ("Add", "Sub", "Mul", "Div", "Where"):
            return None
        for index, operand in enumerate(node.inputs):
            shape = shape_of(operand)
            if node.op_type == "Add" and shape is not None and len(shape) == 4 and shape[1] == 1 \
                    and shape[2] in (1, tokens) and shape[3] == tokens and operand.producer() is not None:
                return node, index
        value = next((i for i in node.inputs if not is_constant(i) and len(shape_of(i) or ()) == 4), None)
    return None


def walk_tokens(graph: ir.Graph, hidden: ir.Value, axis: int, tokens: object, protect: int) -> Walk:
    """Follow the reduction of `hidden`'s token `axis` downstream through the token rules."""
    walk, ctx = Walk(axes={hidden: Axes({axis})}), _Context(tokens, protect)
    derived: set[ir.Value] = set()  # sizes computed from the reduced tokens
    nodes = list(graph)
    start = 0 if hidden.producer() is None else nodes.index(hidden.producer()) + 1
    for node in nodes[start:]:
        reduced = {i: walk.axes[v] for i, v in enumerate(node.inputs) if v in walk.axes}
        sizes = [i for i, v in enumerate(node.inputs) if v in derived]
        if not reduced:
            if sizes:
                derived.update(node.outputs)
            continue
        if any(not (node.op_type == "Reshape" and i == 1) for i in sizes):
            walk.reason = f"{node.op_type} ({node.name}) computes with a size read from the reduced tokens"
            return walk
        step = follow(node, reduced, ctx)
        if isinstance(step, str):
            walk.reason = f"{step} ({node.name})"
            return walk
        for value in node.outputs:
            if any(use.graph is not graph for use, _ in value.uses()):
                walk.reason = f"{node.op_type} ({node.name}): a reduced tensor is read inside a subgraph"
                return walk
        walk.steps[node] = step
        if step.pooled:
            walk.pooled.append(step.pooled)
        if step.sizes:
            derived.update(node.outputs)
        for index, found in step.outputs.items():
            if found:
                walk.axes[node.outputs[index]] = found
    walk.outputs = [v for v in graph.outputs if v in walk.axes]
    return walk


FUSED_ATTENTION = ("Attention", "MultiHeadAttention", "GroupQueryAttention", "PackedAttention",
                   "PackedMultiHeadAttention", "DecoderMaskedMultiHeadAttention")


def find_token_flow(model: ir.Model, protect: int = 1) -> TokenFlow:
    """The blocks of `model` and, before each block after the first, whether its tokens can be reduced."""
    graph = model.graph
    order = {node: i for i, node in enumerate(graph)}
    blocks = []
    for softmax, above in _attentions(graph):
        hidden = _residual_input(graph, softmax, above, order)
        if hidden is not None:
            blocks.append((softmax, hidden))
    if not blocks:
        nodes = list(ir.traversal.RecursiveGraphIterator(graph))
        fused = sorted({n.op_type for n in nodes if n.domain == "com.microsoft" and n.op_type in FUSED_ATTENTION})
        standard = any(n.op_type == "Attention" and n.domain in ("", "ai.onnx") for n in nodes)
        return TokenFlow(0, reason="no attention block found (a Softmax over query·key whose output multiplies "
                                   "the values, inside a residual Add)" + (
                                       f"; the attention here is fused ({', '.join(fused)}, ONNX Runtime's "
                                       "transformer optimizer), which keeps its probabilities inside: reduce tokens "
                                       "in the model before that optimisation" if fused else "") + (
                                       "; the attention here is ONNX's fused Attention op (opset 23), which keeps "
                                       "its probabilities inside: export with attention decomposed (an opset "
                                       "below 23) to reduce tokens" if standard else ""))
    hidden_shape = shape_of(blocks[0][1]) or []
    keys = (shape_of(blocks[0][0].outputs[0]) or [None])[-1]
    if len(hidden_shape) != 3 or hidden_shape[1] != keys or keys is None:
        return TokenFlow(len(blocks), reason=f"the residual stream {hidden_shape} is not [batch, tokens, hidden] "
                                             f"with tokens the attention's keys ({keys})")
    flow = TokenFlow(len(blocks), tokens=keys, attentions=[softmax for softmax, _ in blocks],
                     opset=model.opset_imports.get("", 1))
    for block, ((previous, _), (_, hidden)) in enumerate(zip(blocks, blocks[1:], strict=False), start=1):
        walk = walk_tokens(graph, hidden, TOKEN_AXIS, keys, protect)
        if walk.reason is None and previous.outputs[0] not in _ancestors(hidden):
            walk.reason = "the previous block's attention does not reach this block's input"
        flow.sites.append(TokenSite(block, hidden, previous.outputs[0], _padding_mask(previous, keys), walk))
    return flow
