"""The graph-building side of token reduction: new nodes appended to a model in its opset's op forms, and the
batched gathers and scatters over a token axis every reduction method uses."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
from onnx_ir.tape import Tape

from graphprune.ir.edits import free_name

INT64_MAX = np.iinfo(np.int64).max


@dataclass
class Reduction:
    """What one method made at one site: `index` [batch, k] the kept (or representative) tokens, ascending;
    `hidden` the new hidden state; `kept` the count; `nearest` [batch, n] for every token the position of the
    kept token standing for it (None: restore from the dropped value); `sizes` [batch, k] how many original
    tokens each kept one stands for (None: one each)."""

    index: ir.Value
    hidden: ir.Value
    kept: int | str
    nearest: ir.Value | None = None
    sizes: ir.Value | None = None


class TokenBuilder:
    """New nodes appended to one model's graph (sorted into place at the end), in the opset's op forms."""

    def __init__(self, model: ir.Model, float_type: ir.DataType = ir.DataType.FLOAT) -> None:
        self.model, self.tape, self.float_type = model, Tape(model.graph), float_type
        self.gathered: dict[tuple, ir.Value] = {}  # (outside value, site block, token axes) → its gathered form
        self.opset = model.opset_imports.get("", 13)

    def op(self, op_type: str, *inputs: ir.Value, **attributes) -> ir.Value:
        return self.tape.op(op_type, list(inputs), attributes or None)

    def const(self, array: np.ndarray | list | int | float, dtype: type = np.int64) -> ir.Value:
        return self.tape.initializer(ir.tensor(np.asarray(array, dtype=dtype)),
                                     name=free_name(self.model, "graphprune_tokens"))

    def float_const(self, value: float | list[float]) -> ir.Value:
        """A constant of the hidden state's float type."""
        return self.const(value, self.float_type.numpy())

    def to_float(self, x: ir.Value) -> ir.Value:
        """`x` cast to the hidden state's float type (Cast: CastLike needs opset 15)."""
        return self.op("Cast", x, to=self.float_type)

    def reduce_mean(self, x: ir.Value, axes: list[int]) -> ir.Value:
        if self.opset >= 18:
            return self.op("ReduceMean", x, self.const(axes), keepdims=0)
        return self.op("ReduceMean", x, axes=axes, keepdims=0)

    def dim(self, x: ir.Value, axis: int) -> ir.Value:
        """Size of `x` along `axis` as a 1-element int64 tensor."""
        return self.op("Gather", self.op("Shape", x), self.const([axis]), axis=0)

    def _index(self, index: ir.Value, axis: int, rank: int, shape: ir.Value) -> ir.Value:
        """Token indices [batch, k] placed on `axis` of a rank-`rank` tensor and expanded to `shape`."""
        if rank > 2 or axis != 1:
            view = [1] * rank
            view[0], view[axis] = 0, -1
            index = self.op("Reshape", index, self.const(view))
        return self.op("Expand", index, shape)

    def gather(self, x: ir.Value, axis: int, index: ir.Value, rank: int) -> ir.Value:
        """x (of `rank`) with its `axis` taken at `index` [batch, k] per batch row (a batch of 1 is broadcast)."""
        data = self.op("Expand", x, self.op("Concat", self.dim(index, 0), self.const([1] * (rank - 1)), axis=0))
        shape = self.op("Shape", data)
        target = self.op("Concat", self.op("Slice", shape, self.const([0]), self.const([axis])), self.dim(index, 1),
                         self.op("Slice", shape, self.const([axis + 1]), self.const([INT64_MAX])), axis=0)
        return self.op("GatherElements", data, self._index(index, axis, rank, target), axis=axis)

    def scatter(self, data: ir.Value, axis: int, index: ir.Value, updates: ir.Value, rank: int) -> ir.Value:
        """`data` with the rows at `index` [batch, k] of `axis` replaced by `updates`."""
        return self.op("ScatterElements", data, self._index(index, axis, rank, self.op("Shape", updates)), updates,
                       axis=axis)

    def reduce_max(self, x: ir.Value, axes: list[int], keepdims: int = 0) -> ir.Value:
        if self.opset >= 18:
            return self.op("ReduceMax", x, self.const(axes), keepdims=keepdims)
        return self.op("ReduceMax", x, axes=axes, keepdims=keepdims)

    def topk(self, x: ir.Value, k: ir.Value, largest: int, sorted: int = 1) -> tuple[ir.Value, ir.Value]:
        values, indices = self.tape.op_multi_out("TopK", [x, k], {"axis": 1, "largest": largest, "sorted": sorted},
                                                 num_outputs=2)
        return values, indices

    def kept_count(self, length: ir.Value, keep: float, protect: int) -> ir.Value:
        """max(protect, floor(n · keep + 1/2)) at run time (as TokenSchedule.kept writes it)."""
        rate = self.op("Mul", self.op("Cast", length, to=ir.DataType.DOUBLE), self.const([keep], np.float64))
        rounded = self.op("Floor", self.op("Add", rate, self.const([0.5], np.float64)))
        return self.op("Max", self.op("Cast", rounded, to=ir.DataType.INT64), self.const([protect]))

    def key_padding(self, mask: ir.Value) -> ir.Value:
        """The additive mask's value per key [batch, n] (0 for a key some query may see, very negative for padding)."""
        return self.reduce_max(mask, [1, 2])

    def positions(self, length: ir.Value) -> ir.Value:
        """0 … n-1 for a 1-element length."""
        return self.op("Range", self.const(0), self.op("Squeeze", length, self.const([0])), self.const(1))
