"""Data-free calibration reads BatchNormalization's parameters: under its running statistics a BN output
channel is N(β, γ²), an activation of it that Gaussian pushed through — the statistics consumers then see are
exactly these (checked against Monte-Carlo samples)."""

from __future__ import annotations

import numpy as np
import pytest

from graphprune.analysis.coupling import analyze
from graphprune.passes import CalibrationSpec, run_calibration
from tests.graphs import GraphBuilder
from tests.harness import load

GAMMA = np.array([1.5, -0.5, 0.0, 2.0], np.float32)  # a negative and a constant (γ = 0) channel too
BETA = np.array([0.3, -1.0, 0.7, -2.5], np.float32)


ACTIVATIONS = {  # op, its attributes, the same function in numpy
    None: (None, {}, lambda z: z),
    "relu": ("Relu", {}, lambda z: np.maximum(z, 0)),
    "hardswish": ("HardSwish", {}, lambda z: z * np.clip(z / 6 + 0.5, 0, 1)),
    "leaky": ("LeakyRelu", {"alpha": 0.1}, lambda z: np.where(z >= 0, z, 0.1 * z)),
    "sigmoid": ("Sigmoid", {}, lambda z: 1 / (1 + np.exp(-z))),
    "relu6": ("Clip", {}, lambda z: np.clip(z, 0, 6)),
}


def conv_bn(activation: str | None):
    b = GraphBuilder()
    bn = b.op("BatchNormalization", [b.conv("x", 1, 4, k=3), b.const(GAMMA), b.const(BETA),
                                     b.weight(4), b.weight(4, positive=True)])
    op, attributes, _ = ACTIVATIONS[activation]
    bounds = [b.const(np.array(0, np.float32)), b.const(np.array(6, np.float32))] if op == "Clip" else []
    hidden = b.op(op, [bn, *bounds], **attributes) if op else bn
    return b.build({"x": ["batch", 1, 8, 8]}, [b.conv(hidden, 4, 3, k=1)]), hidden


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_bn_outputs_take_the_moments_the_bn_implies(activation):
    samples = np.random.default_rng(0).standard_normal((2_000_000, 1)) * GAMMA + BETA
    model, hidden = conv_bn(activation)
    analysis = analyze(load(model))
    free = run_calibration(analysis, CalibrationSpec(data_free=True, samples=32), gram_limit=64)
    stats = free.of(next(v for n in analysis.model.graph for v in n.outputs if v.name == hidden), 1)
    expected = ACTIVATIONS[activation][2](samples)
    np.testing.assert_allclose(stats.mean, expected.mean(0), atol=3e-3)
    np.testing.assert_allclose(stats.variance, expected.var(0), atol=5e-3)
    second = np.diag(expected.var(0)) + np.outer(expected.mean(0), expected.mean(0))  # independent channels
    np.testing.assert_allclose(stats.gram / stats.count, second, rtol=3e-3, atol=1e-2)
