"""Data-free channel moments from BatchNormalization. Under its running statistics a BN output channel is
distributed as N(β, γ²) (the affine map of a standardised input), and an elementwise activation of it (Relu,
HardSwish, Sigmoid, …) has the moments of that Gaussian pushed through it (Gauss–Hermite quadrature, exact
for a constant channel). Where a consumer reads such a tensor, these moments replace what synthetic inputs
produce — which match nothing the model was trained on. Channels are taken as independent (the Gram matrix is
N·(diag σ² + μμᵀ))."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import onnx_ir as ir

from graphprune.analysis.coupling import Analysis
from graphprune.ir.values import attr_float, const_of
from graphprune.passes.calibration.statistics import Calibration, consumers

QUADRATURE = np.polynomial.hermite.hermgauss(96)  # nodes and weights for ∫ exp(−t²) f(t) dt
Activation = Callable[[np.ndarray], np.ndarray]


def _clip(node: ir.Node) -> Activation | None:
    """Clip with constant bounds (inputs since opset 11, attributes before); None where one is computed."""
    bounds = [attr_float(node, "min", -np.inf), attr_float(node, "max", np.inf)]
    for index in (1, 2):
        if len(node.inputs) > index and node.inputs[index] is not None:
            bound = const_of(node.inputs[index])
            if bound is None:
                return None
            bounds[index - 1] = float(bound)
    low, high = bounds
    return lambda z: np.clip(z, low, high)


def _hard_sigmoid(node: ir.Node) -> Activation:
    alpha, beta = attr_float(node, "alpha", 0.2), attr_float(node, "beta", 0.5)
    return lambda z: np.clip(alpha * z + beta, 0.0, 1.0)


def _leaky_relu(node: ir.Node) -> Activation:
    alpha = attr_float(node, "alpha", 0.01)
    return lambda z: np.where(z >= 0, z, alpha * z)


ACTIVATIONS: dict[str, Callable[[ir.Node], Activation | None]] = {  # elementwise ops on one input
    "Relu": lambda node: lambda z: np.maximum(z, 0.0),
    "LeakyRelu": _leaky_relu,
    "HardSigmoid": _hard_sigmoid,
    "HardSwish": lambda node: lambda z: z * np.clip(z / 6 + 0.5, 0.0, 1.0),
    "Sigmoid": lambda node: lambda z: 1 / (1 + np.exp(-z)),
    "Tanh": lambda node: np.tanh,
    "Clip": _clip,
}


def norm_moments(value: ir.Value, axis: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(mean, variance) per channel of `value` along `axis` implied by the BatchNormalization producing it
    (directly or through one registered activation); None for any other tensor."""
    node, activation = value.producer(), None
    if node is not None and node.op_type in ACTIVATIONS:
        activation = ACTIVATIONS[node.op_type](node)
        if activation is None:
            return None
        node = node.inputs[0].producer()
    if node is None or node.op_type != "BatchNormalization" or axis != 1 or len(node.inputs) < 3:
        return None
    gamma, beta = const_of(node.inputs[1]), const_of(node.inputs[2])
    if gamma is None or beta is None:
        return None
    mean, std = beta.astype(np.float64).reshape(-1), np.abs(gamma.astype(np.float64)).reshape(-1)
    if activation is None:
        return mean, std**2
    nodes, weights = QUADRATURE
    outputs = activation(mean[:, None] + math.sqrt(2) * std[:, None] * nodes[None, :])
    first = outputs @ weights / math.sqrt(math.pi)
    second = outputs**2 @ weights / math.sqrt(math.pi)
    return first, np.maximum(second - first**2, 0.0)


def use_norm_moments(analysis: Analysis, calibration: Calibration) -> int:
    """Replace, in place, the statistics of every observed tensor a BatchNormalization (or its activation)
    makes by the moments its parameters imply; returns how many tensors."""
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
