"""Canonicalise chains of pure layout ops (Reshape, Transpose, Squeeze, Unsqueeze, scalar Gather) by what
they do to element positions, found by tracing an index array through them at sample sizes.

- A chain that ends in a scalar Gather and only picks a contiguous run along one axis of its source is a
  Slice: torch's packed in_proj (`linear(x).unflatten(-1, (3, E)).unsqueeze(0).transpose(0, -2).squeeze(-2)`,
  then q, k, v = [0], [1], [2]).
- One index Sliced (or Split) off an axis, then that axis Squeezed, is a scalar Gather (Paddle's `qkv[0]`,
  torch's `qkv.unbind(0)`).
- Reshape → Transpose → Reshape that only splits axes and permutes the factors is Reshape (a split) →
  Transpose: torch's `q.view(S, B·H, D).transpose(0, 1).view(B, H, S, D)`, whose middle axis merges the batch
  with the heads.
A rewrite is taken only when the traced index maps agree at two different sets of sample sizes for the
symbolic dims; the chain's shapes come from shape inference.
"""

from __future__ import annotations

import itertools
import re
from typing import Iterator

import numpy as np
import onnx_ir as ir

from graphprune.ir.edits import add_constant, insert_node
from graphprune.ir.values import attr_int, const_of, int_list, shape_of

_LAYOUT = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Gather"}
_PRIMES = (2, 3, 5, 7, 11, 13, 17, 19)


class SampleSizes:
    """A sample size per symbolic dim, handed out in order of first use: distinct primes, rotated by `shift`
    so that a second sample gives every symbol another size."""

    def __init__(self, shift: int) -> None:
        self.shift, self.sizes = shift, {}

    def size(self, name: str) -> int:
        if name not in self.sizes:
            self.sizes[name] = _PRIMES[(len(self.sizes) + self.shift) % len(_PRIMES)]
        return self.sizes[name]


def _sizes(shape: list, symbols: SampleSizes) -> list[int] | None:
    """Concrete sizes for a shape whose symbolic dims are names, products like '4*batch', or other expressions
    inference wrote (paddle2onnx's 'floor(p2o.DynamicDimension.1/2 - 1/2) + 1'), each then one symbol."""
    sizes = []
    for dim in shape:
        if isinstance(dim, int):
            sizes.append(dim)
        elif isinstance(dim, str) and re.fullmatch(r"[A-Za-z_0-9]+(\*[A-Za-z_0-9]+)*", dim):
            sizes.append(int(np.prod([int(f) if f.isdigit() else symbols.size(f) for f in dim.split("*")])))
        elif isinstance(dim, str):
            sizes.append(symbols.size(dim))
        else:
            return None
    return sizes


def _apply(node: ir.Node, array: np.ndarray, symbols: SampleSizes) -> np.ndarray | None:
    """`node` applied to an index array (whose shape is its input's at the sample sizes)."""
    if node.op_type == "Transpose":
        perm = node.attributes.get("perm")
        return np.transpose(array, list(perm.as_ints()) if perm is not None else None)
    if node.op_type in ("Reshape", "Squeeze", "Unsqueeze"):
        out = _sizes(shape_of(node.outputs[0]) or [], symbols)
        return None if out is None or int(np.prod(out)) != array.size else array.reshape(out)
    if node.op_type == "Gather":
        index = const_of(node.inputs[1])
        axis = node.attributes.get("axis")
        if index is None or index.ndim != 0:
            return None
        return np.take(array, int(index), axis=axis.as_int() if axis is not None else 0)
    return None


def _trace(source: ir.Value, chain: list[ir.Node], symbols: SampleSizes) -> tuple[np.ndarray, np.ndarray] | None:
    """(source index array, index array after the chain) at the sample sizes."""
    sizes = _sizes(shape_of(source) or [], symbols)
    if sizes is None or shape_of(source) is None:
        return None
    start = np.arange(int(np.prod(sizes))).reshape(sizes)
    array = start
    for node in chain:
        array = _apply(node, array, symbols)
        if array is None:
            return None
    return start, array


def _chain_to(node: ir.Node) -> tuple[ir.Value, list[ir.Node]] | None:
    """The layout chain ending at `node`: (its source value, its nodes in order)."""
    chain = [node]
    value = node.inputs[0]
    while value.producer() is not None and value.producer().op_type in _LAYOUT - {"Gather"}:
        chain.insert(0, value.producer())
        value = value.producer().inputs[0]
    return (value, chain) if len(chain) > 1 else None


def _as_slice(start: np.ndarray, end: np.ndarray) -> tuple[int, int, int, bool] | None:
    """(axis, begin, stop, regrouped) when `end` is `start` sliced along one axis (other axes whole), then
    regrouped (row-major reshape) when `regrouped`; else None."""
    for axis in range(start.ndim):
        rest = start.size // start.shape[axis]
        if rest == 0 or end.size % rest:
            continue
        begin = int(np.unravel_index(end.flat[0], start.shape)[axis])
        stop = begin + end.size // rest
        if stop > start.shape[axis]:
            continue
        piece = np.take(start, range(begin, stop), axis=axis)
        if np.array_equal(piece.ravel(), end.ravel()):
            return axis, begin, stop, piece.shape != end.shape
    return None


def fold_gather_slices(model: ir.Model) -> int:
    """Scalar Gathers at the end of layout chains that only take a contiguous run of one source axis become
    Slices of the source; returns how many."""
    count = 0
    for node in list(model.graph):
        if node.op_type != "Gather" or node.graph is not model.graph or node.outputs[0].is_graph_output():
            continue
        found = _chain_to(node)
        if found is None:
            continue
        source, chain = found
        slices = set()
        for shift in (0, 1):
            traced = _trace(source, chain, SampleSizes(shift))
            slices.add(None if traced is None else _as_slice(*traced))
        (cut,) = slices if len(slices) == 1 else (None,)
        source_shape, result = shape_of(source), node.outputs[0]
        if cut is None or not isinstance(source_shape[cut[0]], int):
            continue
        axis, begin, stop, regrouped = cut
        piece_shape = [stop - begin if a == axis else d for a, d in enumerate(source_shape)]
        target = _target(piece_shape, shape_of(result) or [None]) if regrouped else None
        if regrouped and target is None:
            continue
        bounds = [_constant(model, [v], result) for v in (begin, stop, axis)]
        out = insert_node(model, node, "Slice", [source, *bounds], f"{result.name}_sliced", result, shape=piece_shape)
        if regrouped:
            out = insert_node(model, node, "Reshape", [out, _constant(model, target, result)],
                              f"{result.name}_regrouped", result)
        result.replace_all_uses_with(out)
        count += 1
    return count


def fold_picked_slices(model: ir.Model) -> int:
    """Squeeze(Slice(x, [i], [i + 1], [a]), [a]) or Squeeze of a Split piece of size 1 — one index of one
    axis, the axis then dropped — is Gather(x, i, axis a): Paddle's `qkv[0], qkv[1], qkv[2]` and torch's
    `qkv.unbind(0)` after a head-split permute, which the Gather folds then see as `qkv[0]`; returns how many."""
    count = 0
    for node in list(model.graph):
        picked = _picked_index(node) if node.op_type == "Squeeze" and node.graph is model.graph else None
        if picked is None:
            continue
        source, index, axis = picked
        result = node.outputs[0]
        gathered = insert_node(model, node, "Gather", [source, _constant(model, index, result)],
                               f"{result.name}_picked", result, {"axis": axis})
        result.replace_all_uses_with(gathered, replace_graph_outputs=True)
        count += 1
    return count


def _picked_index(squeeze: ir.Node) -> tuple[ir.Value, int, int] | None:
    """(source, index, axis) when `squeeze` drops the one axis its Slice or Split input cut to a single index."""
    producer = squeeze.inputs[0].producer()
    axes = int_list(squeeze, "axes", 1)
    source = producer.inputs[0] if producer is not None and producer.op_type in ("Slice", "Split") else None
    shape = shape_of(source)
    if shape is None or axes is None or len(axes) != 1 or not isinstance(shape[axes[0] % len(shape)], int):
        return None
    axis, size = axes[0] % len(shape), shape[axes[0] % len(shape)]
    if producer.op_type == "Split":
        sizes = int_list(producer, "split", 1)
        count = len(producer.outputs)
        sizes = sizes if sizes is not None else ([size // count] * count if size % count == 0 else None)
        piece = list(producer.outputs).index(squeeze.inputs[0])
        split_axis = attr_int(producer, "axis", 0) % len(shape)
        return (source, sum(sizes[:piece]), axis) if split_axis == axis and sizes and sizes[piece] == 1 else None
    if len(producer.inputs) < 4 or any(const_of(v) is None for v in producer.inputs[1:]):
        return None
    starts, ends, slice_axes, *steps = (const_of(v).reshape(-1).tolist() for v in producer.inputs[1:])
    if len(slice_axes) != 1 or slice_axes[0] % len(shape) != axis or (steps and steps[0] != [1]):
        return None
    begin, stop, _ = slice(starts[0], ends[0]).indices(size)
    return (source, begin, axis) if stop == begin + 1 else None


def fold_gather_transposes(model: ir.Model) -> int:
    """A scalar Gather after a Transpose gathers before it: Gather(Transpose(x, perm), axis a) is
    Transpose(Gather(x, axis perm[a]), perm without a) — which lets the gather meet the split it undoes
    (Swin's `qkv.reshape(B, N, 3, H, D).permute(2, 0, 3, 1, 4)[0]`); returns how many."""
    count = 0
    for node in list(model.graph):
        transpose = node.inputs[0].producer() if node.op_type == "Gather" and node.inputs else None
        index = const_of(node.inputs[1]) if transpose is not None else None
        if transpose is None or transpose.op_type != "Transpose" or index is None or index.ndim != 0 \
                or "perm" not in transpose.attributes or shape_of(transpose.inputs[0]) is None:
            continue
        perm = list(transpose.attributes["perm"].as_ints())
        axis = node.attributes["axis"].as_int() % len(perm) if "axis" in node.attributes else 0
        inner, result = perm[axis], node.outputs[0]
        shape = [d for a, d in enumerate(shape_of(transpose.inputs[0])) if a != inner]
        early = insert_node(model, node, "Gather", [transpose.inputs[0], node.inputs[1]], f"{result.name}_early",
                            result, {"axis": inner}, shape)
        rest = [p - (p > inner) for p in perm if p != inner]
        moved = insert_node(model, node, "Transpose", [early], f"{result.name}_moved", result, {"perm": rest})
        result.replace_all_uses_with(moved, replace_graph_outputs=True)
        count += 1
    return count


def _constant(model: ir.Model, values: list[int] | int, near: ir.Value) -> ir.Value:
    return add_constant(model, f"{near.name}_bound", np.array(values, dtype=np.int64))


def _splits_and_perms(src: list, dst: list) -> Iterator[tuple[list, list[int]]]:
    """Candidates (factors, perm) for dst = Transpose(Reshape(src, factors), perm), each src axis split into a
    run of consecutive factors that are dst axes, by trying orders of dst's axes (dst has at most 6)."""
    if len(dst) > 6:
        return
    for order in itertools.permutations(range(len(dst))):
        factors, runs, position = [], True, 0
        for size in src:
            run: list[int] = []
            product: list = []
            while position < len(order) and _product_of(product) != _product_of([size]):
                run.append(order[position])
                product.append(dst[order[position]])
                position += 1
            if _product_of(product) != _product_of([size]):
                runs = False
                break
            factors += [dst[a] for a in run]
        if runs and position == len(order):
            yield factors, [list(order).index(a) for a in range(len(dst))]


def _product_of(dims: list) -> tuple[int, tuple[str, ...]] | None:
    constant, symbols = 1, []
    for dim in dims:
        if isinstance(dim, int):
            constant *= dim
        elif isinstance(dim, str):
            for factor in dim.split("*"):
                if factor.isdigit():
                    constant *= int(factor)
                else:
                    symbols.append(factor)
        else:
            return None
    return constant, tuple(sorted(symbols))


def _target(src: list, factors: list) -> list[int] | None:
    """Reshape entries for `factors`: static sizes, 0 where a symbolic factor copies src's size at the same
    position, and at most one -1."""
    entries, unknown = [], 0
    for position, factor in enumerate(factors):
        if isinstance(factor, int):
            entries.append(factor)
        elif position < len(src) and src[position] == factor:
            entries.append(0)
        else:
            entries.append(-1)
            unknown += 1
    return entries if unknown <= 1 else None


def fold_split_transposes(model: ir.Model) -> int:
    """Reshape → Transpose → Reshape chains that only split axes and permute the factors become a splitting
    Reshape and one Transpose; returns how many."""
    count = 0
    for last in list(model.graph):
        if last.op_type != "Reshape" or last.graph is not model.graph:
            continue
        transpose = last.inputs[0].producer()
        first = transpose.inputs[0].producer() if transpose is not None and transpose.op_type == "Transpose" else None
        if first is None or first.op_type != "Reshape" or len(transpose.outputs[0].uses()) != 1 \
                or len(first.outputs[0].uses()) != 1:
            continue
        src, dst = shape_of(first.inputs[0]), shape_of(last.outputs[0])
        if src is None or dst is None or None in src or None in dst:
            continue
        chain = [first, transpose, last]
        found = next((c for c in _splits_and_perms(src, dst)
                      if _target(src, c[0]) is not None and _same_map(first.inputs[0], chain, c)), None)
        if found is None:
            continue
        result = last.outputs[0]
        split = insert_node(model, last, "Reshape", [first.inputs[0], _constant(model, _target(src, found[0]), result)],
                            f"{result.name}_split", result, shape=found[0])
        permuted = insert_node(model, last, "Transpose", [split], f"{result.name}_permuted", result,
                               {"perm": found[1]})
        result.replace_all_uses_with(permuted, replace_graph_outputs=True)
        count += 1
    return count


def _same_map(source: ir.Value, chain: list[ir.Node], found: tuple[list, list[int]]) -> bool:
    """The chain and Reshape(factors) → Transpose(perm) move every element alike, at two sample sizes."""
    factors, perm = found
    for shift in (0, 1):
        symbols = SampleSizes(shift)
        traced = _trace(source, chain, symbols)
        sizes = _sizes(factors, symbols)
        if traced is None or sizes is None:
            return False
        start, end = traced
        if int(np.prod(sizes)) != start.size or not np.array_equal(np.transpose(start.reshape(sizes), perm), end):
            return False
    return True
