"""The token-axis rules: how the token axis maps through an op, and a rule that fails on a form it does not
expect gives a reason instead of crashing the analysis."""

from __future__ import annotations

import onnx_ir as ir

from graphprune.ops.tokens import follow


class Context:
    def __init__(self, shapes: dict[str, list]) -> None:
        self.shapes = shapes

    def shape(self, value):
        return self.shapes.get(value.name) if value is not None else None

    def is_tokens(self, size) -> bool:
        return size == "seq"

    def protected(self) -> int:
        return 1


def node(op_type: str, *names: str, **attributes) -> ir.Node:
    inputs = [ir.Value(name=name) for name in names]
    made = ir.node(op_type, inputs, attributes)
    made.outputs[0].name = "out"
    return made


def test_broadcasting_gathers_a_per_token_mask_and_keeps_a_broadcast_bias():
    add = node("Add", "logits", "mask")
    ctx = Context({"logits": ["batch", 4, "seq", "seq"], "mask": ["batch", 1, 1, "seq"],
                   "out": ["batch", 4, "seq", "seq"]})
    step = follow(add, {0: frozenset({2, 3})}, ctx)
    assert step.outputs == {0: frozenset({2, 3})} and step.gathers == {1: frozenset({3})}
    ctx.shapes["mask"] = ["batch", 1, 1, 7]
    assert "neither per token nor broadcast" in follow(add, {0: frozenset({2, 3})}, ctx)


def test_a_weight_over_tokens_and_an_unknown_op_are_reasons():
    ctx = Context({"w": [6, 6], "x": ["batch", "seq", 16], "out": ["batch", 6, 16]})
    assert "contracts over the token axis" in follow(node("MatMul", "w", "x"), {1: frozenset({1})}, ctx)
    assert follow(node("NonMaxSuppression", "x"), {0: frozenset({1})}, ctx) == \
        "NonMaxSuppression (ai.onnx) has no token rule"


def test_a_rule_that_fails_on_an_unexpected_form_names_itself_instead_of_crashing():
    ctx = Context({"b": ["batch", "seq", 16], "out": ["batch", "seq", 16]})  # input "a" has no known shape
    reason = follow(node("Add", "a", "b"), {0: frozenset({1}), 1: frozenset({1})}, ctx)
    assert reason.startswith("Add: token rule broadcast cannot model this form (")
