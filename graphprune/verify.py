"""Verification: the checker, output comparison, and the masked reference a pruned model must match."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_ir as ir

from graphprune import runtime
from graphprune.analysis import Analysis
from graphprune.blocks import Block
from graphprune.errors import GraphpruneError, first_line
from graphprune.groups import Group
from graphprune.io import as_file, to_proto, uses_external_data
from graphprune.ops import lookup
from graphprune.plan import PruningPlan
from graphprune.weights import stored_weight


class VerificationError(GraphpruneError):
    """The pruned model fails a check that the original model passes."""


@dataclass
class Verification:
    """Which checks a pruned model passed, which could not apply because the original fails them too, and how
    far its outputs drift from the original's on the same inputs (None where ORT cannot run both)."""

    passed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    drift: float | None = None
    inputs: str = "random inputs"


def check(model: ir.Model | str | os.PathLike, full_check: bool = True) -> None:
    """Run onnx.checker (with shape inference when full_check); raises onnx.checker.ValidationError."""
    if isinstance(model, ir.Model) and not uses_external_data(model):
        onnx.checker.check_model(to_proto(model), full_check=full_check)
        return
    with as_file(model) as path:
        onnx.checker.check_model(str(path), full_check=full_check)


SIDES = (1, 32, 224)  # sizes tried, smallest first, for symbolic non-batch axes until the original runs


def _checker_failures(model: ir.Model | str | os.PathLike) -> dict[str, str | None]:
    """Each checker's failure message for `model` (None where it passes)."""
    failures: dict[str, str | None] = {}
    for name, full in (("onnx.checker full_check", True), ("onnx.checker", False)):
        try:
            check(model, full_check=full)
            failures[name] = None
        except Exception as exc:  # noqa: BLE001 - the checker raises several types
            failures[name] = first_line(exc)
    return failures


def _run(model: ir.Model | str | os.PathLike, feeds: dict[str, np.ndarray] | None, dims: dict[str, int] | None,
         side: int) -> tuple[str | None, list[np.ndarray] | None]:
    """(failure message, None), or (None, outputs) of one ORT run on `feeds` or seeded random inputs."""
    try:
        sess = runtime.session(model)
        return None, runtime.run(sess, feeds if feeds is not None else runtime.random_feeds(sess, dims=dims, side=side))
    except Exception as exc:  # noqa: BLE001 - ORT raises several types
        return first_line(exc), None


def verify_like(original: ir.Model | str | os.PathLike, pruned: ir.Model | str | os.PathLike,
                feeds: dict[str, np.ndarray] | None = None, dims: dict[str, int] | None = None) -> Verification:
    """Hold `pruned` to every check `original` passes (checker, full_check, an ORT run on `feeds` or random
    inputs); raise VerificationError on the first it fails. Random inputs size symbolic non-batch axes by
    `dims`, else by the first of SIDES at which the original runs (exports often constrain them). Records the
    output drift between the two."""
    reference, actual = _checker_failures(original), _checker_failures(pruned)
    provider = runtime.provider_name()
    ran = "onnxruntime run" + ("" if provider == "CPUExecutionProvider" else f" on {provider}")
    for side in SIDES if feeds is None else SIDES[:1]:
        reference[ran], dense = _run(original, feeds, dims, side)
        if dense is not None:
            break
    actual[ran], pruned_outputs = _run(pruned, feeds, dims, side)
    inputs = "the given inputs" if feeds is not None else f"random inputs, batch 1, other symbolic axes {side}"
    result = Verification(inputs=inputs)
    if dense is not None and pruned_outputs is not None:
        result.drift = relative_error(dense, pruned_outputs)
    for name, reason in reference.items():
        if reason is not None:
            result.skipped.append(f"{name} (the original fails it too: {reason[:120]})")
        elif actual[name] is not None:
            raise VerificationError(f"the pruned model fails {name}: {actual[name]}")
        else:
            result.passed.append(name)
    return result


def relative_error(reference: list[np.ndarray], actual: list[np.ndarray]) -> float:
    """Largest ‖ref − act‖∞ / max(‖ref‖∞, 1e-12) over paired outputs (inf on a shape mismatch)."""
    worst = 0.0
    for ref, act in zip(reference, actual, strict=True):
        if ref.shape != act.shape:
            return float("inf")
        ref64, act64 = ref.astype(np.float64), act.astype(np.float64)
        scale = max(float(np.max(np.abs(ref64), initial=0.0)), 1e-12)
        worst = max(worst, float(np.max(np.abs(ref64 - act64), initial=0.0)) / scale)
    return worst


def mask_consumers(analysis: Analysis, plan: PruningPlan) -> ir.Model:
    """Zero, in place, every consumer weight slice that reads a planned unit, and force the router logits of
    planned experts to -inf (a router that never picks them): the model a correct rewrite must reproduce.
    Activations whose range a node reads (dynamic quantization) get their planned channels zeroed too: the
    pruned model's range covers only the kept ones (and zero)."""
    for gid, units in plan.removed.items():
        group = analysis.group(gid)
        if group.experts is not None:
            _mask_experts(analysis.model, group, units)
        for unit in units.tolist() if group.blocks is not None else []:
            mask_block(analysis.model, group.blocks[unit])
        for member in group.members:
            if member.consumer:
                stored_weight(member.value).zero(member.axis, member.positions(units))
            elif not member.is_param:
                _mask_ranges(analysis.model, member.value, member.axis, member.positions(units))
    return analysis.model


def mask_block(model: ir.Model, block: Block) -> ir.Node:
    """Multiply the block's branch by 0 before it joins the stream (x + 0·f(x)); returns the inserted Mul."""
    branch = block.branch
    zero = ir.Value(name=f"{branch.name}_block_zero", const_value=ir.tensor(np.zeros((), branch.dtype.numpy())))
    model.graph.register_initializer(zero)
    masked = ir.node("Mul", [branch, zero], name=f"{branch.name}_mask_block")
    masked.outputs[0].shape, masked.outputs[0].type = branch.shape, branch.type
    model.graph.insert_before(block.add, masked)
    block.add.replace_input_with(1 - block.stream_index, masked.outputs[0])
    return masked


def unmask_block(model: ir.Model, block: Block, masked: ir.Node) -> None:
    """Undo `mask_block`."""
    zero = masked.inputs[1]
    block.add.replace_input_with(1 - block.stream_index, masked.inputs[0])
    model.graph.remove(masked, safe=True)
    model.graph.initializers.pop(zero.name)


def _mask_ranges(model: ir.Model, value: ir.Value, axis: int, positions: np.ndarray) -> None:
    """Zero `positions` of `value` along `axis` where a node reads its range (DynamicQuantizeLinear)."""
    readers = [u for u in value.uses() if u.idx == 0 and (rule := lookup(u.node)) is not None and rule.reads_range]
    if not readers or not positions.size:
        return
    rank = len(value.shape)
    mask = np.ones([value.shape[axis] if a == axis else 1 for a in range(rank)], dtype=value.dtype.numpy())
    mask.reshape(-1)[positions] = 0
    constant = ir.Value(name=f"{value.name}_range_mask", const_value=ir.tensor(mask))
    model.graph.register_initializer(constant)
    masked = ir.node("Mul", [value, constant], name=f"{value.name}_mask_range")
    model.graph.insert_before(readers[0].node, masked)
    for usage in readers:
        usage.node.replace_input_with(usage.idx, masked.outputs[0])


def _mask_experts(model: ir.Model, group: Group, units: np.ndarray) -> None:
    """Add -inf to the router logits of experts `units`, right after the layer computing them."""
    for dim in group.experts.logits():
        logits, axis = dim.value, dim.axis
        positions = next(m for m in group.members if m.value is logits and m.axis == axis).positions(units)
        bias = np.zeros([logits.shape[axis]] + [1] * (len(logits.shape) - 1 - axis), dtype=logits.dtype.numpy())
        bias[positions] = -np.inf
        mask = ir.Value(name=f"{logits.name}_expert_mask", const_value=ir.tensor(bias))
        model.graph.register_initializer(mask)
        masked = ir.node("Add", [logits, mask], name=f"{logits.name}_mask_experts")
        ir.convenience.replace_all_uses_with(logits, masked.outputs[0])
        masked.replace_input_with(0, logits)
        model.graph.insert_after(logits.producer(), masked)
