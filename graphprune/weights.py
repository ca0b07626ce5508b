"""Weights as the model computes with them, through quantized storage: what criteria score, what the masked
reference zeroes and what compensation updates — the initializer itself, or the integers a DequantizeLinear
or a quantized op (QLinearConv, MatMulInteger, MatMulNBits…) reads with its scales."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from graphprune import ops
from graphprune.quantization import Encoding


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
            index: list = [slice(None)] * array.ndim
            index[axis] = positions
            array[tuple(index)] = 0
        else:
            array = self.encoding.zeroed(array, axis, positions)
        self.value.const_value = ir.tensor(array, name=self.value.name)

    def store(self, dense: np.ndarray) -> None:
        """Replace the real values, requantized with the existing scales where the tensor is quantized."""
        like = self.stored()
        array = dense.astype(like.dtype) if self.encoding is None else self.encoding.encode(dense, like)
        self.value.const_value = ir.tensor(array, name=self.value.name)


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


def dense(value: ir.Value) -> np.ndarray | None:
    """The real values of weight `value` (None where it is not a weight)."""
    weight = stored_weight(value)
    return None if weight is None else weight.dense()
