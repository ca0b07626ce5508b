"""Sensitivity runs cut short: masking a group changes only the weights of the layers that read its units, so
everything the graph computes before those layers is the dense model's. It is computed once per batch and
cached; each measurement then runs only the part of the graph downstream of the changed weights, with them fed
as inputs — one ONNX Runtime session per group instead of a full forward pass and a new session per point.

Exact by construction (the same ops on the same values); a group that changes the graph itself (residual
blocks), a model whose weights live in external data or with control-flow bodies, or a cache past its memory
budget, falls back to running the whole model."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir

from graphprune.analysis.groups import Group
from graphprune.analysis.weights import stored_weight
from graphprune.io import runtime
from graphprune.io.save import to_proto
from graphprune.ir.model import uses_external_data
from graphprune.passes.calibration.sources import Feeds
from graphprune.passes.calibration.statistics import session_exposing

log = logging.getLogger("graphprune")

CACHE_BYTES = 2 << 30  # at most this much of cached dense activations (else groups fall back to whole runs)
Outputs = list[list[np.ndarray]]


class SuffixRunner:
    """Runs the model, with one group's weights changed in place, on `batches` — only downstream of the change
    where it can — and returns every output of every batch, as the whole model would."""

    def __init__(self, model: ir.Model, groups: list[Group], batches: list[Feeds], dense: Outputs) -> None:
        self.model, self.batches, self.dense = model, batches, dense
        self.graphs: dict[int, tuple[Suffix, set[str]]] = {}
        self.sessions: dict[int, object] = {}
        if uses_external_data(model) or _has_bodies(model):
            return
        proto = to_proto(model)
        graph = _Graph(proto)
        for group in groups:
            weights = {stored_weight(m.value).value.name for m in group.members if m.consumer}
            suffix = None if group.blocks is not None or not weights else graph.suffix(weights)
            if suffix is not None:
                self.graphs[group.id] = (suffix, weights)
        self.cache = self._cached()

    def _cached(self) -> list[dict[str, np.ndarray]]:
        """The dense values every suffix reads (the batch's inputs among them), per batch; past the budget, none
        (every group then runs whole)."""
        produced = {v.name for node in self.model.graph for v in node.outputs}
        names = sorted({n for suffix, _ in self.graphs.values() for n in suffix.cut if n in produced})
        if not names:
            return [dict(feeds) for feeds in self.batches]
        sess = session_exposing(self.model, names)
        inputs = [i.name for i in sess.get_inputs()]
        count = len(self.model.graph.outputs)
        cache, spent = [], 0
        for feeds in self.batches:
            values = sess.run(None, {k: v for k, v in feeds.items() if k in inputs})[count:]
            cache.append({**feeds, **dict(zip(names, values, strict=True))})
            spent += sum(v.nbytes for v in values)
            if spent * len(self.batches) / len(cache) > CACHE_BYTES:
                log.info("sensitivity: cached activations would pass %d MiB; measuring on whole runs",
                         CACHE_BYTES >> 20)
                self.graphs.clear()
                return [{} for _ in self.batches]
        return cache

    def run(self, group: Group, changed: list[ir.Value]) -> Outputs | None:
        """The outputs with `changed` (the weights masking or compensation set) as they now are in the model;
        None where this group's change cannot be run cut short (run the whole model)."""
        entry = self.graphs.get(group.id)
        if entry is None or not {v.name for v in changed} <= entry[1]:
            return None
        suffix, weights = entry
        if group.id not in self.sessions:  # one group is measured at a time: one session held
            self.sessions = {group.id: runtime.session(suffix.model(weights, self.cache[0]))}
        arrays = {name: value.const_value.numpy() for name, value in _weights(self.model, weights)}
        results = []
        for feeds, dense in zip(self.cache, self.dense, strict=True):
            outputs = self.sessions[group.id].run(None, {**{n: feeds[n] for n in suffix.cut}, **arrays})
            full = list(dense)
            for position, output in zip(suffix.positions, outputs, strict=True):
                full[position] = output
            results.append(full)
        return results


def _weights(model: ir.Model, names: set[str]) -> list[tuple[str, ir.Value]]:
    return [(name, value) for name, value in model.graph.initializers.items() if name in names]


def _has_bodies(model: ir.Model) -> bool:
    return any(attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)
               for node in model.graph for attr in node.attributes.values())


class _Graph:
    """A model proto with its initializers and each tensor's reading nodes indexed once, to cut suffixes from."""

    def __init__(self, proto: onnx.ModelProto) -> None:
        self.proto = proto
        self.initializers = {t.name: t for t in proto.graph.initializer}
        self.readers: dict[str, list[int]] = {}
        for index, node in enumerate(proto.graph.node):
            for name in node.input:
                self.readers.setdefault(name, []).append(index)

    def suffix(self, weights: set[str]) -> Suffix | None:
        """The part of the graph downstream of the nodes reading `weights` (initializers, fed as inputs there),
        or None where a weight is computed by a node."""
        graph, initializers, readers = self.proto.graph, self.initializers, self.readers
        if not weights <= initializers.keys():  # a weight computed by a node: its readers' inputs are not all fed
            return None
        reached, stack = set(), [i for w in weights for i in readers.get(w, ())]
        while stack:
            index = stack.pop()
            if index not in reached:
                reached.add(index)
                stack.extend(i for out in graph.node[index].output for i in readers.get(out, ()))
        nodes = [graph.node[i] for i in sorted(reached)]
        made = {out for node in nodes for out in node.output}
        read = list(dict.fromkeys(n for node in nodes for n in node.input if n and n not in made))
        outputs = [(position, v) for position, v in enumerate(graph.output) if v.name in made]
        return Suffix(self.proto, nodes, [n for n in read if n not in initializers],
                      [initializers[n] for n in read if n in initializers], [position for position, _ in outputs],
                      [v for _, v in outputs])


@dataclass
class Suffix:
    """Nodes downstream of a group's changed weights: the dense values they read (`cut`), the initializers
    they read (the changed ones become inputs), the positions among the graph's outputs of those they compute."""

    proto: onnx.ModelProto
    nodes: list[onnx.NodeProto]
    cut: list[str]
    initializers: list[onnx.TensorProto]
    positions: list[int]
    outputs: list[onnx.ValueInfoProto]

    def model(self, weights: set[str], example: dict[str, np.ndarray]) -> ir.Model:
        """The suffix as a model: the cut values typed as in `example` (any sizes), `weights` as inputs."""
        def typed(name: str, dtype: np.dtype, rank: int) -> onnx.ValueInfoProto:
            return onnx.helper.make_tensor_value_info(name, onnx.helper.np_dtype_to_tensor_dtype(dtype),
                                                      [None] * rank)
        inputs = [typed(n, example[n].dtype, example[n].ndim) for n in self.cut]
        inputs += [onnx.helper.make_tensor_value_info(t.name, t.data_type, t.dims) for t in self.initializers
                   if t.name in weights]
        graph = onnx.helper.make_graph(self.nodes, "suffix", inputs, self.outputs,
                                       [t for t in self.initializers if t.name not in weights])
        model = onnx.helper.make_model(graph, opset_imports=self.proto.opset_import, ir_version=self.proto.ir_version)
        model.functions.extend(self.proto.functions)
        return ir.from_proto(model)
