"""Constants at load, made to look like what the dimension rules model:

- Shared constants: exporters de-duplicate identical constants (tf2onnx: one zero bias for every conv of a
  width; one shape vector for many Reshapes), which would couple unrelated layers: every extra reader of an
  integer constant or of a uniform one (all elements equal) gets its own copy — a lazy view of the same tensor,
  so no memory until one is sliced — and `reshare_constants` merges the copies that end up identical when the
  model is written. A weight with distinct values read by several layers is genuinely shared (tied
  embeddings, ALBERT's layers, one conv applied twice): it stays one tensor, read directly where TorchScript
  wrote an Identity, so its axes are coupled across all its readers and it is written once.
- Layout ops on weights (torch's `in_proj_weight.split(...)`, `weight.t()` written as Split, Slice or Transpose
  of an initializer): their outputs become constants, computed lazily from the source tensor when read.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx_ir as ir

from graphprune.ir.edits import free_name
from graphprune.ir.values import const_of

CLONE = "__graphprune_copy"  # name infix of a shared constant's per-reader copies


def origin(tensor: ir.TensorProtocol) -> ir.TensorProtocol:
    """The tensor a per-reader copy stands for (a tensor is its own origin)."""
    return getattr(tensor, "graphprune_origin", tensor)


def _copy_of(model: ir.Model, value: ir.Value, name: str) -> ir.Value:
    """A new initializer standing for `value`'s tensor: a lazy view with its own name (onnx-ir keeps a tensor's
    name equal to its value's, so the tensor itself cannot be shared)."""
    source = value.const_value
    name = free_name(model, name)
    view = ir.LazyTensor(lambda: source, source.dtype, source.shape, name=name)
    view.graphprune_origin = origin(source)
    copy = ir.Value(name=name, shape=value.shape, type=value.type, const_value=view)
    model.graph.register_initializer(copy)
    return copy


def unshare_constants(model: ir.Model) -> int:
    """Give every main-graph reader of a shared initializer de-duplicated by value (integer, or uniform) beyond
    the first its own copy, and every Identity of an initializer (the TorchScript exporter shares tied or
    de-duplicated weights that way) a copy in its place — or, for a genuinely shared weight, the weight itself;
    returns how many."""
    count = 0
    for node in list(model.graph):
        source = node.inputs[0] if node.op_type == "Identity" and node.inputs else None
        output = node.outputs[0] if node.outputs else None
        if source is not None and source.const_value is not None and output is not None and output.uses() \
                and not output.is_graph_output():
            shared = not _deduplicated(source.const_value) and not source.is_graph_input()
            output.replace_all_uses_with(source if shared else _copy_of(model, source, f"{output.name}{CLONE}"))
            count += 1
    for value in list(model.graph.initializers.values()):
        if value.const_value is None or value.is_graph_input() or value.is_graph_output() \
                or not _deduplicated(value.const_value):
            continue
        readers = [u for u in value.uses() if u.node.graph is model.graph]
        for index, usage in enumerate(readers[1:], 1):
            usage.node.replace_input_with(usage.idx, _copy_of(model, value, f"{value.name}{CLONE}{index}"))
            count += 1
    return count


UNIFORM_CHECK_BYTES = 1 << 20  # shared float constants up to this size are read to see whether all values are equal


def _deduplicated(tensor: ir.TensorProtocol) -> bool:
    """Whether readers of `tensor` may share it only because an exporter de-duplicated equal constants: integer
    tensors (shape vectors, indices) and float tensors whose elements are all equal (zero biases, unit scales).
    A weight with distinct values is one the model really reuses."""
    if not tensor.dtype.is_floating_point():
        return True
    if tensor.nbytes > UNIFORM_CHECK_BYTES:  # never read a large weight to ask: one that size is a real weight
        return False
    array = tensor.numpy()
    return array.size <= 1 or bool(np.all(array.reshape(-1) == array.reshape(-1)[0]))


def reshare_constants(model: ir.Model) -> int:
    """Merge initializers standing for the same tensor (untouched copies, or copies sliced alike) back into one
    (the first); returns how many."""
    first: dict[int, ir.Value] = {}
    merged = 0
    for value in list(model.graph.initializers.values()):
        if value.const_value is None or value.is_graph_input() or value.is_graph_output():
            continue
        keep = first.setdefault(id(origin(value.const_value)), value)
        if keep is not value:
            value.replace_all_uses_with(keep)
            model.graph.initializers.pop(value.name)
            if isinstance(keep.const_value, ir.LazyTensor):  # a slice the copies shared took the last one's name
                keep.const_value.name = keep.name
            merged += 1
    return merged




@dataclass(frozen=True)
class _Spec:
    """What a layout op needs, captured when folding (the node itself may be gone when the tensor is read)."""

    attrs: dict
    consts: list  # constant inputs after the data input (None where omitted)
    outputs: int

    @classmethod
    def of(cls, node: ir.Node) -> _Spec:
        return cls({k: a.value for k, a in node.attributes.items()}, [const_of(v) for v in node.inputs[1:]],
                   len(node.outputs))

    def attr(self, name: str, default):
        return self.attrs.get(name, default)

    def const(self, index: int) -> np.ndarray | None:
        return self.consts[index - 1] if 0 < index <= len(self.consts) else None


def _split(spec: _Spec, array: np.ndarray) -> list[np.ndarray]:
    axis = spec.attr("axis", 0)
    sizes = spec.const(1) if spec.const(1) is not None else spec.attr("split", None)
    if sizes is None:
        count = spec.attr("num_outputs", spec.outputs)
        sizes = [-(-array.shape[axis] // count)] * count
        sizes[-1] = array.shape[axis] - sum(sizes[:-1])
    return np.split(array, np.cumsum(list(sizes))[:-1], axis=axis)


def _axes(spec: _Spec) -> tuple[int, ...] | None:
    axes = spec.const(1) if spec.const(1) is not None else spec.attr("axes", None)
    return None if axes is None else tuple(int(a) for a in axes)


def _slice(spec: _Spec, array: np.ndarray) -> list[np.ndarray]:
    starts, ends = spec.const(1).tolist(), spec.const(2).tolist()
    axes = spec.const(3).tolist() if spec.const(3) is not None else list(range(len(starts)))
    steps = spec.const(4).tolist() if spec.const(4) is not None else [1] * len(starts)
    index: list = [slice(None)] * array.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        index[axis] = slice(start, end, step)
    return [array[tuple(index)]]


def _reshape(spec: _Spec, array: np.ndarray) -> list[np.ndarray]:
    target = [int(t) for t in spec.const(1)]
    if not spec.attr("allowzero", 0):  # 0 copies the input's size at that position
        target = [array.shape[i] if t == 0 else t for i, t in enumerate(target)]
    return [np.reshape(array, target)]


_LAYOUTS: dict[str, Callable[[_Spec, np.ndarray], list[np.ndarray]]] = {
    "Reshape": _reshape,
    "Slice": _slice,
    "Transpose": lambda spec, a: [np.transpose(a, spec.attr("perm", None))],
    "Split": _split,
    "Squeeze": lambda spec, a: [np.squeeze(a, _axes(spec)) if _axes(spec) else np.squeeze(a)],
    "Unsqueeze": lambda spec, a: [np.expand_dims(a, _axes(spec))],
}


def _folded(fold: Callable, spec: _Spec, tensor: ir.TensorProtocol, index: int) -> ir.Tensor:
    return ir.tensor(np.ascontiguousarray(fold(spec, tensor.numpy())[index]))


def _concatenated(tensors: list[ir.TensorProtocol], axis: int) -> ir.Tensor:
    return ir.tensor(np.ascontiguousarray(np.concatenate([t.numpy() for t in tensors], axis=axis)))


def _fold_concat(model: ir.Model, node: ir.Node) -> bool:
    """A Concat of constants (the dynamo exporter reorders an LSTM's gate blocks that way) becomes one."""
    sources = [v.const_value for v in node.inputs if v is not None]
    out = node.outputs[0]
    if not sources or any(t is None for t in sources) or node.graph is not model.graph or out.is_graph_output() \
            or not out.uses():
        return False
    axis = node.attributes["axis"].as_int() if "axis" in node.attributes else 0
    shape = np.concatenate([np.broadcast_to(np.False_, tuple(t.shape.numpy())) for t in sources], axis=axis).shape
    _replace_lazily(model, out, functools.partial(_concatenated, sources, axis), sources[0].dtype, shape)
    return True


def _replace_lazily(model: ir.Model, output: ir.Value, compute: Callable[[], ir.Tensor], dtype: ir.DataType,
                    shape: tuple[int, ...]) -> None:
    """Every reader of `output` reads instead a new initializer computed by `compute` when first read."""
    name = free_name(model, f"{output.name}_folded")
    lazy = ir.LazyTensor(compute, dtype, ir.Shape(shape), name=name)
    value = ir.Value(name=name, shape=ir.Shape(shape), type=output.type, const_value=lazy)
    model.graph.register_initializer(value)
    output.replace_all_uses_with(value)


def fold_constant_layouts(model: ir.Model) -> int:
    """Outputs of Transpose, Split, Slice, Squeeze, Unsqueeze, Reshape of a constant (with constant axes, sizes,
    bounds and targets; opset 10+ Slice) and Concats of constants become lazily computed constants; returns how
    many nodes."""
    count = 0
    for node in list(model.graph):
        if node.op_type == "Concat" and node.domain in ("", "ai.onnx"):
            count += _fold_concat(model, node)
            continue
        fold = _LAYOUTS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        source = node.inputs[0] if node.inputs else None
        if node.op_type == "Slice" and len(node.inputs) < 3:
            continue  # opset < 10: bounds as attributes (not seen on weights)
        if fold is None or source is None or source.const_value is None or node.graph is not model.graph \
                or not any(o.uses() for o in node.outputs) \
                or any(v is not None and v.const_value is None for v in node.inputs[1:]) \
                or any(o.is_graph_output() for o in node.outputs):
            continue
        spec = _Spec.of(node)  # the shapes, from a stand-in that takes no memory:
        shapes = [a.shape for a in fold(spec, np.broadcast_to(np.False_, tuple(source.const_value.shape.numpy())))]
        for index, output in enumerate(node.outputs):
            _replace_lazily(model, output, functools.partial(_folded, fold, spec, source.const_value, index),
                            source.const_value.dtype, shapes[index])
        count += 1
    return count
