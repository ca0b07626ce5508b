"""A latency table on the real runtime: every weight layer (Conv, Gemm, MatMul with a constant weight) timed
alone in ONNX Runtime at candidate output widths, with the input sizes, provider and threads the user runs;
cached in a JSON file the user can reuse. From it: the width multiple each layer runs fast at."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from graphprune import progress
from graphprune.analysis.coupling import Analysis
from graphprune.errors import GraphpruneError
from graphprune.io import runtime
from graphprune.ir.values import shape_of

log = logging.getLogger("graphprune")
FRACTIONS = (1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125)
MULTIPLES = (4, 8, 16, 32)
RUNS = 20
STEP = 0.03  # a step: one channel more costs at least 3 % more time…
STEP_FACTOR = 3.0  # …and at least three times the median one-channel step elsewhere
_WEIGHT_OUT_AXIS = {"Conv": 0, "ConvTranspose": 1, "Gemm": None, "MatMul": -1}  # Gemm: by transB


@dataclass
class LatencyTable:
    """Milliseconds per layer (node name) and output width, for one model, provider, threads and input sizes."""

    key: str
    layers: dict[str, dict[int, float]] = field(default_factory=dict)

    def save(self, path: str | os.PathLike) -> None:
        data = {"key": self.key, "layers": {n: {str(w): ms for w, ms in t.items()} for n, t in self.layers.items()}}
        Path(path).write_text(json.dumps(data, indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike) -> LatencyTable:
        try:
            data = json.loads(Path(path).read_text())
            return cls(data["key"], {n: {int(w): float(ms) for w, ms in t.items()} for n, t in data["layers"].items()})
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise GraphpruneError(f"{path}: not a latency table written by graphprune") from exc

    def fast_multiple(self, layer: str) -> int:
        """The finest width multiple m where going from a multiple of m to one channel more always costs a
        clear step (kernels work in blocks of m channels: widths between two multiples cost like the next
        multiple up, so cutting down to a multiple saves time) and other one-channel steps do not; else 1."""
        table = self.layers.get(layer, {})
        steps = {w: table[w + 1] - table[w] for w in table if w + 1 in table and not np.isnan(table[w])}
        for multiple in MULTIPLES:
            aligned = [(s, table[w + 1]) for w, s in steps.items() if w % multiple == 0]
            others = [s for w, s in steps.items() if w % multiple]
            floor = STEP_FACTOR * float(np.median(others)) if others else 0.0
            if aligned and all(s > max(floor, STEP * above) for s, above in aligned):
                return multiple
        return 1

    def group_multiples(self, analysis: Analysis) -> dict[int, int]:
        """Group id → the largest fast multiple of the layers whose output width the group sets."""
        multiples: dict[int, int] = {}
        for group in analysis.prunable():
            for node in _producers(group):
                multiples[group.id] = max(multiples.get(group.id, 1), self.fast_multiple(node.name))
        return multiples


    def full_ms(self, layer: str) -> float:
        """The layer's time at its full output width (0 where it was not timed)."""
        table = self.layers.get(layer, {})
        value = table[max(table)] if table else 0.0
        return 0.0 if np.isnan(value) else value

    def total_ms(self) -> float:
        """The timed layers' time at full width: the part of the model's latency pruning can save."""
        return sum(self.full_ms(layer) for layer in self.layers)

    def unit_ms(self, analysis: Analysis) -> dict[int, np.ndarray]:
        """Group id → milliseconds each unit saves: the slope of its layers' time over output width (full to
        half), plus its share of the time of the layers reading it (their input width), and for residual blocks
        the whole time of the layers inside; never negative (timing noise)."""
        costs: dict[int, np.ndarray] = {}
        for group in analysis.prunable():
            if group.blocks is not None:
                timed = {id(n.inputs[1]): self.full_ms(n.name) for n in _layers(analysis) if n.name in self.layers}
                costs[group.id] = np.array([sum(timed.get(id(w), 0.0) for w in block.weights)
                                            for block in group.blocks])
                continue
            per_unit = sum(self._slope(node.name) for node in _producers(group))
            readers = {m.node.name: m.node for m in group.members if m.consumer and m.node is not None}
            per_unit += sum(self.full_ms(name) / max(group.size, 1) for name in readers if name in self.layers)
            costs[group.id] = np.full(group.size, max(per_unit, 0.0))
        return costs

    def _slope(self, layer: str) -> float:
        """ms per output channel of `layer` between its full width and the width nearest half of it."""
        table = {w: ms for w, ms in self.layers.get(layer, {}).items() if not np.isnan(ms)}
        if len(table) < 2:
            return 0.0
        full = max(table)
        half = min(table, key=lambda w: abs(w - full / 2) if w < full else np.inf)
        return (table[full] - table[half]) / (full - half)


def table_key(fingerprint: str, dims: dict[str, int] | None, threads: int | None) -> str:
    sizes = ",".join(f"{k}={v}" for k, v in sorted((dims or {}).items()))
    return f"{fingerprint}|{runtime.provider_name()}|threads={threads or 'default'}|{sizes}"


def candidate_widths(size: int) -> list[int]:
    """Widths around each kept fraction: the fraction's width and the multiples of 4…32 next to it (and the
    width one above each multiple, to see whether the multiple is a step down)."""
    widths = {size}
    for fraction in FRACTIONS:
        width = max(1, round(size * fraction))
        widths.add(width)
        for multiple in MULTIPLES:
            below = width - width % multiple
            if below >= multiple:
                widths.update({below, below + 1})
    return sorted(w for w in widths if 1 <= w <= size)


def measure(analysis: Analysis, key: str, dims: dict[str, int] | None, threads: int | None = None) -> LatencyTable:
    """Time every prunable weight layer of `analysis.model` alone at its candidate output widths."""
    layers = _layers(analysis)
    table = LatencyTable(key)
    with progress.step("measuring layer latencies"):
        for node in progress.iterate(layers, "timing layers", "layer"):
            table.layers[node.name] = {w: _time_layer(node, w, dims, threads)
                                       for w in candidate_widths(_out_size(node))}
    return table


def load_or_measure(path: str | os.PathLike | None, analysis: Analysis, key: str, dims: dict[str, int] | None,
                    threads: int | None = None) -> LatencyTable:
    """The table cached at `path` when it was made for this model, provider, threads and sizes; else a fresh
    measurement (saved to `path` when given)."""
    if path is not None and Path(path).exists():
        table = LatencyTable.load(path)
        if table.key == key:
            return table
        log.warning("%s was measured for another model, provider, thread count or input sizes: re-measuring", path)
    table = measure(analysis, key, dims, threads)
    if path is not None:
        table.save(path)
    return table


def _layers(analysis: Analysis) -> list[ir.Node]:
    """Nodes whose weight's output axis is a member of a prunable group."""
    return list({node.name: node for group in analysis.prunable() for node in _producers(group)}.values())


def _producers(group) -> list[ir.Node]:
    """Float weight layers (named) whose output axis is one of the group's members."""
    nodes = []
    for member in group.param_members():
        for usage in member.value.uses():
            node = usage.node
            if node.op_type in _WEIGHT_OUT_AXIS and usage.idx == 1 and node.name \
                    and member.value.const_value.dtype == ir.DataType.FLOAT \
                    and member.axis == _out_axis(node) % len(member.value.const_value.shape):
                nodes.append(node)
    return nodes


def _out_axis(node: ir.Node) -> int:
    axis = _WEIGHT_OUT_AXIS[node.op_type]
    if axis is None:
        attr = node.attributes.get("transB")
        return 0 if attr is not None and attr.as_int() else 1
    return axis


def _out_size(node: ir.Node) -> int:
    return int(node.inputs[1].const_value.shape[_out_axis(node)])


def _time_layer(node: ir.Node, width: int, dims: dict[str, int] | None, threads: int | None) -> float:
    """ms of `node` alone with its float weight cut to `width` outputs (NaN for grouped convolutions, whose
    cost follows their producers' widths)."""
    group = node.attributes.get("group")
    if group is not None and group.as_int() != 1:
        return float("nan")
    x_shape = [d if isinstance(d, int) else (dims or {}).get(d, 1) for d in shape_of(node.inputs[0]) or []]
    w_shape = list(node.inputs[1].const_value.shape)
    w_shape[_out_axis(node) % len(w_shape)] = width
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(w_shape).astype(np.float32), "w")]
    inputs = ["x", "w"]
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        inits.append(numpy_helper.from_array(np.zeros(width, np.float32), "b"))
        inputs.append("b")
    attrs = {a.name: a.value for a in node.attributes.values()}
    graph = helper.make_graph([helper.make_node(node.op_type, inputs, ["y"], **attrs)], "layer",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    # IR 8, not onnx's newest: onnxruntime(-gpu) releases can lag onnx's (ORT 1.31 refuses onnx 1.23's IR 14)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    model = ir.serde.deserialize_model(proto)
    sess = runtime.session(model, threads=threads, timing=True)
    return runtime.latency_ms(sess, {"x": rng.standard_normal(x_shape).astype(np.float32)}, warmup=3, runs=RUNS)
