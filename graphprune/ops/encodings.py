"""Quantized storage: how an integer initializer encodes the real weights a node computes with.

An `Encoding` turns the stored integers into real values, writes "zero" into chosen positions (the masked
reference of a quantized consumer is its zero point, not the integer 0) and requantizes compensated weights
with the scales it already has. Op rules say which inputs are stored how (`OpRule.encoding`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np


def axis_index(ndim: int, axis: int, positions: np.ndarray) -> tuple:
    """The index selecting `positions` along `axis` of an `ndim`-dimensional array (other axes whole)."""
    index: list = [slice(None)] * ndim
    index[axis] = positions
    return tuple(index)


class Encoding(ABC):
    """Stored integers ↔ real values, for one tensor."""

    per_element = 1  # real values one stored element holds (packed sub-byte formats: more)
    packed_axes = 0  # trailing stored axes that only pack values (the weight's own rank is that much lower)

    @abstractmethod
    def dense(self, stored: np.ndarray) -> np.ndarray:
        """The real values (float32), on the stored tensor's axes."""

    @abstractmethod
    def zeroed(self, stored: np.ndarray, axis: int, positions: np.ndarray) -> np.ndarray:
        """A copy of `stored` whose `positions` along `axis` encode 0."""

    @abstractmethod
    def encode(self, dense: np.ndarray, like: np.ndarray) -> np.ndarray:
        """`dense` requantized with this encoding's scales into `like`'s dtype (rounded, saturated)."""


@dataclass
class Affine(Encoding):
    """real = (q - zero_point) · scale, both broadcast against q (ONNX DequantizeLinear semantics)."""

    scale: np.ndarray
    zero_point: np.ndarray

    @classmethod
    def along(cls, scale: np.ndarray | None, zero_point: np.ndarray | None, shape: tuple[int, ...], axis: int,
              block: int = 0) -> Affine:
        """From ONNX's forms: scalar (per tensor), 1-D along `axis` (per channel) or `block`-wise along `axis`
        (scale of the stored rank, `axis` shortened); a missing scale is 1 and a missing zero point 0."""
        return cls(_expand(np.float32(1) if scale is None else scale, shape, axis, block).astype(np.float32),
                   _expand(np.int64(0) if zero_point is None else zero_point, shape, axis, block))

    def dense(self, stored: np.ndarray) -> np.ndarray:
        return ((stored.astype(np.float64) - self.zero_point) * self.scale).astype(np.float32)

    def zeroed(self, stored: np.ndarray, axis: int, positions: np.ndarray) -> np.ndarray:
        out = stored.copy()
        index = axis_index(stored.ndim, axis, positions)
        out[index] = np.broadcast_to(self.zero_point, stored.shape)[index]
        return out

    def encode(self, dense: np.ndarray, like: np.ndarray) -> np.ndarray:
        info = np.iinfo(like.dtype)
        q = np.rint(dense.astype(np.float64) / self.scale) + self.zero_point
        return np.clip(q, info.min, info.max).astype(like.dtype)


def _expand(param: np.ndarray, shape: tuple[int, ...], axis: int, block: int) -> np.ndarray:
    param = np.asarray(param)
    if param.ndim == 0 or param.size == 1:
        return param.reshape(())
    if block:
        return np.repeat(param, block, axis=axis)[axis_index(len(shape), axis, np.arange(shape[axis]))]
    view = [1] * len(shape)
    view[axis] = param.size
    return param.reshape(view)


@dataclass
class NBits(Encoding):
    """com.microsoft MatMulNBits: B [N, blocks, block·bits/8] packs `bits`-bit values little end first;
    real = (q - zero_point) · scale per row and block. Dense values come back as [N, blocks, block]."""

    scales: np.ndarray  # [N, blocks]
    zero_points: np.ndarray | None  # [N, blocks] unpacked, or None: the midpoint 2^(bits-1)
    bits: int
    block: int

    packed_axes = 1

    @property
    def per_element(self) -> int:  # type: ignore[override]
        return 8 // self.bits

    def _zero(self) -> np.ndarray:
        return np.full(self.scales.shape, 1 << (self.bits - 1)) if self.zero_points is None else self.zero_points

    def dense(self, stored: np.ndarray) -> np.ndarray:
        q = unpack(stored, self.bits, self.block)
        return ((q - self._zero()[..., None]) * self.scales[..., None]).astype(np.float32)

    def zeroed(self, stored: np.ndarray, axis: int, positions: np.ndarray) -> np.ndarray:
        q = unpack(stored, self.bits, self.block)
        index = axis_index(q.ndim, axis, positions)
        q[index] = np.broadcast_to(self._zero()[..., None], q.shape)[index]
        return pack(q, self.bits).reshape(stored.shape)

    def encode(self, dense: np.ndarray, like: np.ndarray) -> np.ndarray:
        q = np.rint(dense / self.scales[..., None]) + self._zero()[..., None]
        return pack(np.clip(q, 0, (1 << self.bits) - 1).astype(np.int64), self.bits).reshape(like.shape)


def unpack(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """[..., bytes] of `bits`-bit values (lowest bits first) → [..., count] int64."""
    per_byte = 8 // bits
    shifts = np.arange(per_byte) * bits
    values = (packed[..., None].astype(np.int64) >> shifts) & ((1 << bits) - 1)
    return values.reshape(*packed.shape[:-1], -1)[..., :count]


def pack(values: np.ndarray, bits: int) -> np.ndarray:
    """Inverse of `unpack`: [..., count] → [..., ceil(count·bits/8)] uint8 (padding bits zero)."""
    per_byte = 8 // bits
    pad = (-values.shape[-1]) % per_byte
    values = np.concatenate([values, np.zeros((*values.shape[:-1], pad), values.dtype)], axis=-1)
    grouped = values.reshape(*values.shape[:-1], -1, per_byte).astype(np.uint8)
    return np.bitwise_or.reduce(grouped << (np.arange(per_byte, dtype=np.uint8) * bits), axis=-1).astype(np.uint8)
