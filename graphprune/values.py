"""Reading tensor values of the IR: static/symbolic shapes and constant contents."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir


def shape_of(value: ir.Value | None) -> list | None:
    """Static sizes as int, symbolic ones as their name (None when anonymous); None for unknown rank."""
    if value is None:
        return None
    if value.const_value is not None:
        return [int(d) for d in value.const_value.shape]
    if value.shape is None:
        return None
    return [d if isinstance(d, int) else d.value for d in value.shape]


def const_of(value: ir.Value | None) -> np.ndarray | None:
    """The constant's contents (initializers, lifted Constant nodes); None for computed tensors."""
    if value is None or value.const_value is None:
        return None
    return value.const_value.numpy()
