"""Data-free channel moments from BatchNormalization. Under its running statistics a BN output channel is
distributed as N(β, γ²) (the affine map of a standardised input), and a Relu of it is a rectified Gaussian.
Where a consumer reads such a tensor, these moments replace what synthetic inputs produce — which match
nothing the model was trained on. Channels are taken as independent (the Gram matrix is N·(diag σ² + μμᵀ))."""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from graphprune.analysis import Analysis
from graphprune.passes.calibration import Calibration, consumers
from graphprune.values import const_of


def norm_moments(value: ir.Value, axis: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(mean, variance) per channel of `value` along `axis` implied by the BatchNormalization producing it
    (directly or through a Relu); None for any other tensor."""
    node, rectified = value.producer(), False
    if node is not None and node.op_type == "Relu":
        node, rectified = node.inputs[0].producer(), True
    if node is None or node.op_type != "BatchNormalization" or axis != 1 or len(node.inputs) < 3:
        return None
    gamma, beta = const_of(node.inputs[1]), const_of(node.inputs[2])
    if gamma is None or beta is None:
        return None
    mean, std = beta.astype(np.float64).reshape(-1), np.abs(gamma.astype(np.float64)).reshape(-1)
    if not rectified:
        return mean, std**2
    z = mean / np.where(std > 0, std, 1.0)  # a constant channel (γ = 0) is Relu(β) exactly
    cdf = 0.5 * (1 + np.vectorize(math.erf)(z / math.sqrt(2)))
    pdf = np.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)
    first = np.where(std > 0, mean * cdf + std * pdf, np.maximum(mean, 0))
    second = np.where(std > 0, (mean**2 + std**2) * cdf + mean * std * pdf, np.maximum(mean, 0) ** 2)
    return first, np.maximum(second - first**2, 0.0)


def use_norm_moments(analysis: Analysis, calibration: Calibration) -> int:
    """Replace, in place, the statistics of every observed tensor a BatchNormalization (or its Relu) makes by
    the moments its parameters imply; returns how many tensors."""
    replaced = set()
    for member in consumers(analysis.prunable()):
        key = (member.reads.value.name, member.reads.axis)
        moments = norm_moments(member.reads.value, member.reads.axis) if key in calibration.stats else None
        stats = calibration.stats.get(key)
        if moments is None or key in replaced or stats.mean is None or len(moments[0]) != len(stats.mean):
            continue
        mean, variance = moments
        stats.mean, stats.m2 = mean, variance * stats.count
        if stats.gram is not None:
            stats.gram = (stats.count * (np.diag(variance) + np.outer(mean, mean))).astype(np.float32)
        replaced.add(key)
    return len(replaced)
