"""Weights as the model computes with them, through quantized storage: what criteria score, what the masked
reference zeroes and what compensation updates — the initializer itself, or the integers a DequantizeLinear
or a quantized op (QLinearConv, MatMulInteger, MatMulNBits…) reads with its scales."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from graphprune import ops
from graphprune.analysis.groups import Member
from graphprune.errors import GraphpruneError
from graphprune.ir.values import shape_of
from graphprune.ops.encodings import Encoding, axis_index

NORM_BLOCK = 1 << 22  # elements converted to float64 at a time by position_norms


@dataclass
class StoredWeight:
    """The initializer holding a weight, and how it encodes real values (None: it holds them)."""

    value: ir.Value
    encoding: Encoding | None

    @property
    def quantized(self) -> bool:
        return self.encoding is not None

    def stored(self) -> np.ndarray:
        return self.value.const_value.numpy()

    def dense(self) -> np.ndarray:
        """The real values, on the stored tensor's axes."""
        return self.stored() if self.encoding is None else self.encoding.dense(self.stored())

    def zero(self, axis: int, positions: np.ndarray) -> None:
        """Make `positions` along `axis` encode 0, in place (the zero point of a quantized tensor)."""
        array = self.stored()
        if self.encoding is None:
            array = array.copy()
            array[axis_index(array.ndim, axis, positions)] = 0
        else:
            array = self.encoding.zeroed(array, axis, positions)
        self.value.const_value = ir.tensor(array, name=self.value.name)

    def store(self, dense: np.ndarray) -> None:
        """Replace the real values, requantized with the existing scales where the tensor is quantized (an
        array already of the stored type is kept as it is: it now belongs to the weight). Values computed as NaN
        or Inf where the weight had none are refused: a model is never written with them."""
        like = self.stored()
        if dense.dtype.kind in "fc" and not np.isfinite(dense).all() and np.isfinite(self.dense()).all():
            refuse_non_finite(self.value.name, dense)
        array = dense.astype(like.dtype, copy=False) if self.encoding is None else self.encoding.encode(dense, like)
        self.value.const_value = ir.tensor(array, name=self.value.name)


def refuse_non_finite(name: str, computed: np.ndarray) -> None:
    """Raise when values computed for weight `name` hold NaN or Inf (refit or compensation gone wrong)."""
    bad = int(np.count_nonzero(~np.isfinite(computed)))
    if bad:
        raise GraphpruneError(f"computing new values for weight {name!r} gave {bad} NaN or Inf value(s); nothing "
                              "was written (try --no-compensate, or more or other calibration data)")


def stored_weight(value: ir.Value) -> StoredWeight | None:
    """Where the real tensor `value` is stored: a constant (maybe read quantized by the nodes using it), or
    the constant a DequantizeLinear dequantizes into it. None for computed tensors, scales and zero points."""
    if value.const_value is None:
        producer = value.producer()
        rule = ops.lookup(producer) if producer is not None else None
        if rule is None or not rule.dequantizes:
            return None
        source = producer.inputs[0]
        encoding = rule.encoding(producer, 0)
        return StoredWeight(source, encoding) if source.const_value is not None and encoding is not None else None
    for usage in value.uses():
        rule = ops.lookup(usage.node)
        if rule is None:
            continue
        if usage.idx in rule.quantization_inputs(usage.node):
            return None
        encoding = rule.encoding(usage.node, usage.idx)
        if encoding is not None:
            return StoredWeight(value, encoding)
    return StoredWeight(value, None)


def is_weight(value: ir.Value | None) -> bool:
    """A weight: constant real values, or constant integers dequantized on the way in."""
    return value is not None and stored_weight(value) is not None


def position_norms(weight: np.ndarray, axis: int, power: int) -> np.ndarray:
    """Σ|w|^power over each position along `axis` of a weight's real values (in float64, a block of positions
    at a time: bounded memory on multi-GB weights)."""
    array = np.moveaxis(weight, axis, 0)
    rows = array.reshape(array.shape[0], -1)
    norms = np.empty(rows.shape[0])
    step = max(1, NORM_BLOCK // max(rows.shape[1], 1))
    for start in range(0, rows.shape[0], step):
        norms[start:start + step] = (np.abs(rows[start:start + step].astype(np.float64)) ** power).sum(axis=1)
    return norms


@dataclass
class ConsumerView:
    """A consumer weight seen from the channels it reads: one row per read channel, the unit owning it. Where
    storage groups channels into blocks along the read axis (MatMulNBits), the blocks are unfolded."""

    weight: StoredWeight
    axis: int
    unit_of: np.ndarray  # per read channel
    channels: int
    block: int  # read channels per stored position along `axis` (1 unless block-wise)

    def rows(self) -> np.ndarray:
        """[read channel, everything else] in float64 (a copy)."""
        return self.read_rows().astype(np.float64)

    def read_rows(self) -> np.ndarray:
        """`rows()` in the weight's own real type, a view of the stored array where the layout allows: read
        only (a float32 weight costs no float64 copy)."""
        dense = self.weight.dense()
        if self.block == 1:
            rows = np.moveaxis(dense, self.axis, 0)
            return rows.reshape(rows.shape[0], -1)
        rows = np.moveaxis(dense, (self.axis, -1), (0, 1))
        return rows.reshape(rows.shape[0] * rows.shape[1], -1)[: self.channels]

    def row_norms(self, power: int, mean: bool = False) -> np.ndarray:
        """Σ|w|^power over each row of `rows()` (or its mean), without a float64 copy of the whole weight."""
        if self.block != 1:
            rows = np.abs(self.rows()) ** power
            return rows.mean(axis=1) if mean else rows.sum(axis=1)
        dense = self.weight.dense()
        norms = position_norms(dense, self.axis, power)
        return norms / max(1, dense.size // max(dense.shape[self.axis], 1)) if mean else norms

    def row_combination(self, positions: np.ndarray, coefficients: np.ndarray) -> np.ndarray:
        """Σ_p coefficients[p] · (the weight's slice at read channel positions[p]), in float64 a block of
        slices at a time; shaped as the weight without the read axis (block-wise storage: as a row)."""
        if self.block != 1:
            return np.tensordot(coefficients, self.rows()[positions], axes=(0, 0))
        slices = np.moveaxis(self.weight.dense(), self.axis, 0)
        total = np.zeros(slices.shape[1:])
        step = max(1, NORM_BLOCK // max(total.size, 1))
        for start in range(0, len(positions), step):
            part = slices[positions[start:start + step]].astype(np.float64)
            total += np.tensordot(coefficients[start:start + step], part, axes=(0, 0))
        return total

    def positions(self, units: np.ndarray) -> np.ndarray:
        return np.flatnonzero(np.isin(self.unit_of, units))

    def dense_from(self, rows: np.ndarray) -> np.ndarray:
        """Real values on the stored tensor's axes from `rows` laid out as `rows()` gives them (their shape is
        the stored one; block-wise storage holds a block's values where it stores their packed bytes)."""
        shape = list(self.weight.value.const_value.shape)
        if self.block == 1:
            moved = [shape[self.axis], *(n for a, n in enumerate(shape) if a != self.axis)]
            return np.moveaxis(rows.reshape(moved), 0, self.axis)
        shape[-1] = self.block
        rest = [n for a, n in enumerate(shape) if a not in (self.axis, len(shape) - 1)]
        padded = np.zeros((shape[self.axis] * self.block, rows.shape[1]))
        padded[: self.channels] = rows
        return np.moveaxis(padded.reshape([shape[self.axis], self.block, *rest]), (0, 1), (self.axis, -1))


def consumer_view(member: Member) -> ConsumerView:
    """The view of consumer member `member` (a weight slice reading `member.reads`)."""
    weight = stored_weight(member.value)
    channels = shape_of(member.reads.value)[member.reads.axis]
    stored = len(member.unit_of)
    block = 1 if channels == stored else -(-channels // stored)
    unit_of = member.unit_of if block == 1 else np.repeat(member.unit_of, block)[:channels]
    return ConsumerView(weight, member.axis, unit_of, channels, block)
