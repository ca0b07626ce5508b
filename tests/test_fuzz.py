"""Fuzz: random DAGs of supported ops built with onnx.helper, pruned at random ratios across every group at
once, must match the masked original in ONNX Runtime."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graphprune.analysis.coupling import analyze
from graphprune.analysis.plan import PruningPlan
from tests.graphs import GraphBuilder
from tests.harness import load, masked_check

ACTIVATIONS = ["Relu", "Sigmoid", "HardSwish", "Tanh", "Identity"]


def random_cnn(draw) -> tuple:
    """Grow a DAG over tensors of shape [batch, C, H, W]; every dangling tensor feeds a Gemm head."""
    b = GraphBuilder(seed=draw(st.integers(0, 2**16)), constant_nodes=draw(st.booleans()))
    tensors = [("x", 3, 8)]  # (name, channels, spatial size)
    for _ in range(draw(st.integers(2, 9))):
        name, c, hw = tensors[draw(st.integers(0, len(tensors) - 1))]
        kind = draw(st.sampled_from(["conv", "dw", "grouped", "bn", "act", "add", "mul", "concat", "split",
                                     "pool", "slice", "strided", "pad", "resize", "nhwc"]))
        if kind == "conv" or c < 2:
            c_out = draw(st.integers(2, 8))
            new = [(b.conv(name, c, c_out, draw(st.sampled_from([1, 3]))), c_out, hw)]
        elif kind == "dw":
            new = [(b.conv(name, c, c, 3, group=c), c, hw)]
        elif kind == "grouped":
            group = draw(st.sampled_from([g for g in (2, 3, 4) if c % g == 0] or [1]))
            new = [(b.conv(name, c, 2 * group, 3, group=group), 2 * group, hw)]
        elif kind == "bn":
            new = [(b.bn(name, c), c, hw)]
        elif kind == "act":
            new = [(b.op(draw(st.sampled_from(ACTIVATIONS)), [name]), c, hw)]
        elif kind == "add":
            twins = [t for t in tensors if t[1] == c and t[2] == hw]
            other = twins[draw(st.integers(0, len(twins) - 1))][0]
            new = [(b.op("Add", [name, b.conv(other, c, c)]), c, hw)]
        elif kind == "mul":
            new = [(b.op("Mul", [name, b.weight(c, 1, 1)]), c, hw)]
        elif kind == "concat":
            peers = [t for t in tensors if t[2] == hw]
            other, c2, _ = peers[draw(st.integers(0, len(peers) - 1))]
            new = [(b.op("Concat", [name, b.op("Relu", [other])], axis=1), c + c2, hw)]
        elif kind == "split":
            first = draw(st.integers(1, c - 1))
            parts = b.op("Split", [name, b.const(np.array([first, c - first]))], outputs=2, axis=1)
            new = [(parts[0], first, hw), (parts[1], c - first, hw)]
        elif kind == "pool" and hw > 2:
            pool = draw(st.sampled_from(["MaxPool", "AveragePool"]))
            new = [(b.op(pool, [name], kernel_shape=[2, 2], strides=[2, 2]), c, hw // 2)]
        elif kind == "strided" and hw > 2:  # spatial stride; a channel-axis step freezes (not modelled)
            start = draw(st.integers(0, 1))
            steps = [b.const(np.array(v)) for v in ([start, start], [hw, hw], [2, 3], [2, 2])]
            new = [(b.op("Slice", [name, *steps]), c, len(range(start, hw, 2)))]
        elif kind == "pad" and hw <= 8:
            pads = b.const(np.array([0, 0, 1, 1, 0, 0, 1, 1]))
            new = [(b.op("Pad", [name, pads], mode=draw(st.sampled_from(["constant", "reflect", "edge"]))), c, hw + 2)]
        elif kind == "resize" and hw <= 8:
            scales = b.const(np.array([1.0, 1.0, 2.0, 2.0], np.float32))
            new = [(b.op("Resize", [name, "", scales], mode=draw(st.sampled_from(["nearest", "linear"]))), c, hw * 2)]
        elif kind == "nhwc":
            c_out = draw(st.integers(2, 8))
            channels_last = b.op("Transpose", [name], perm=[0, 2, 3, 1])
            linear = b.op("MatMul", [channels_last, b.weight(c, c_out)])
            new = [(b.op("Transpose", [linear], perm=[0, 3, 1, 2]), c_out, hw)]
        else:
            start = draw(st.integers(0, c - 1))
            end = draw(st.integers(start + 1, c))
            sliced = b.op("Slice", [name, b.const(np.array([start])), b.const(np.array([end])), b.const(np.array([1]))])
            new = [(sliced, end - start, hw)]
        tensors.extend(new)
    consumed = {i for node in b.nodes for i in node.input}
    heads = [b.head(n, c, 4) if draw(st.booleans()) else _flatten_head(b, n, c, hw)
             for n, c, hw in tensors[1:] if n not in consumed]
    out = heads[0]
    for head in heads[1:]:
        out = b.op("Add", [out, head])
    return b.build({"x": ["batch", 3, 8, 8]}, [out], opset=17)


def _flatten_head(b: GraphBuilder, name: str, c: int, hw: int) -> str:
    """Flatten the whole feature map into a Gemm (index stride remapping)."""
    flat = b.op("Flatten", [name], axis=1)
    return b.op("Gemm", [flat, b.weight(c * hw * hw, 4, scale=0.1), b.weight(4)])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_graphs_prune_to_masked_equivalent(data):
    model = random_cnn(data.draw)
    ratios = data.draw(st.lists(st.floats(0.0, 0.9), min_size=1, max_size=32))
    seed = data.draw(st.integers(0, 2**16))

    def plan_all(analysis) -> PruningPlan:
        rng = np.random.default_rng(seed)
        plan = PruningPlan()
        for i, group in enumerate(analysis.prunable()):
            count = min(group.size - 1, int(group.size * ratios[i % len(ratios)]))
            plan.remove(group, rng.choice(group.size, size=count, replace=False))
        return plan

    result = masked_check(model, plan_all)
    assert result["error"] <= 1e-4, result
    frozen = [g for g in analyze(load(model)).groups if g.frozen]
    allowed = ("graph output", "graph input")  # every op in these graphs is modelled: nothing else may freeze
    assert all(any(a in r for a in allowed) for g in frozen for r in g.frozen_reasons), [g.summary() for g in frozen]
