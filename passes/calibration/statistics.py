"""Calibration statistics: run the model in ONNX Runtime on sample inputs and stream per-channel statistics of every
tensor a prunable group's consumer weights read — without keeping activations in memory.

Statistics are over every position but the channel axis (tokens, or batch x height x width for convs):
mean and variance (Chan/Welford merge of batch moments) and the mean squared value.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import onnx_ir as ir

from graphprune import ops, progress
from graphprune.analysis.coupling import Analysis
from graphprune.analysis.groups import Group, Member
from graphprune.errors import GraphpruneError, first_line
from graphprune.io import runtime
from graphprune.io.scratch import spilled
from graphprune.passes.calibration.routing import RoutingStats, routing_plans, update
from graphprune.passes.calibration.sources import Feeds

log = logging.getLogger("graphprune")


GRAM_MEMORY = 1 << 28  # bytes of Gram matrices (and the inverse Hessians replacing them) held in memory


@dataclass
class ChannelStats:
    """Streaming moments of one tensor axis, per channel."""

    count: int = 0
    mean: np.ndarray | None = None
    m2: np.ndarray | None = None  # Σ (x - mean)², merged across batches
    gram: np.ndarray | None = None  # Σ x xᵀ over positions (channels x channels, float32), when asked for
    hessian_inverse: np.ndarray | None = None  # OBS's damped inverse, replacing the Gram once computed

    def update(self, x: np.ndarray, axis: int, matrix: Callable[[int], np.ndarray] | None = None) -> None:
        """Merge a batch; with `matrix` (size → a zeroed float32 matrix to accumulate in), the Gram too."""
        rows = np.moveaxis(x, axis, -1).reshape(-1, x.shape[axis])
        if matrix is not None:
            single = rows.astype(np.float32, copy=False)
            if self.gram is None:
                self.gram = matrix(rows.shape[1])
            self.gram += single.T @ single
        n, mean = rows.shape[0], rows.sum(axis=0, dtype=np.float64) / max(rows.shape[0], 1)
        real = np.promote_types(rows.dtype, np.float32)  # centred in float32 at least, summed in float64
        centred = np.subtract(rows, mean.astype(real), dtype=real)
        m2 = np.square(centred, out=centred).sum(axis=0, dtype=np.float64)
        if self.count == 0:
            self.count, self.mean, self.m2 = n, mean, m2
            return
        total = self.count + n
        delta = mean - self.mean
        self.m2 = self.m2 + m2 + delta**2 * self.count * n / total
        self.mean = self.mean + delta * n / total
        self.count = total

    @property
    def variance(self) -> np.ndarray:
        return self.m2 / max(self.count, 1)

    @property
    def mean_square(self) -> np.ndarray:
        """E[x²] per channel: ‖X_j‖² / number of positions."""
        return self.variance + self.mean**2


@dataclass
class BlockStats:
    """Per residual block, Σ over samples of cos(x, x + f(x)) (each sample flattened) and the sample count."""

    cosines: np.ndarray
    count: int = 0

    def update(self, unit: int, stream: np.ndarray, output: np.ndarray) -> None:
        x, y = (a.reshape(a.shape[0], -1).astype(np.float64) for a in (stream, output))
        norms = np.maximum(np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1), 1e-30)
        self.cosines[unit] += float(np.sum(np.sum(x * y, axis=1) / norms))
        if unit == 0:
            self.count += len(x)

    @property
    def influence(self) -> np.ndarray:
        """ShortGPT's block influence, 1 − mean cos(x, x + f(x)): how much each block changes its input."""
        return 1.0 - self.cosines / max(self.count, 1)


@dataclass
class Calibration:
    """Statistics per (tensor name, axis), and how many samples produced them."""

    stats: dict[tuple[str, int], ChannelStats] = field(default_factory=dict)
    samples: int = 0
    source: str = ""
    routing: dict[str, RoutingStats] = field(default_factory=dict)  # MoE router logits name → statistics
    blocks: dict[int, BlockStats] = field(default_factory=dict)  # depth group id → how much each block moves x
    held: int = 0  # bytes of Gram matrices held in memory

    def matrix(self, size: int) -> np.ndarray:
        """A zeroed size x size float32 matrix for a Gram: in memory while those held stay within GRAM_MEMORY,
        else spilled to a file (see `spilled`)."""
        nbytes = size * size * 4
        if self.held + nbytes > GRAM_MEMORY:
            return spilled((size, size), np.float32)
        self.held += nbytes
        return np.zeros((size, size), np.float32)

    def routing_of(self, group: Group) -> RoutingStats:
        """Routing statistics of an expert group."""
        name = group.experts.logits()[0].value.name
        if name not in self.routing:
            raise GraphpruneError(f"no routing statistics for the MoE layer routed by {name}")
        return self.routing[name]

    def of(self, value: ir.Value, axis: int) -> ChannelStats:
        key = (value.name, axis)
        if key not in self.stats:
            raise GraphpruneError(f"no calibration statistics for {value.name}[{axis}]")
        return self.stats[key]


def observed_axes(analysis: Analysis) -> dict[str, set[int]]:
    """Tensor name → channel axes read by the consumer weights of prunable groups."""
    wanted: dict[str, set[int]] = {}
    for group in analysis.prunable():
        for member in group.members:
            if member.reads is not None:
                wanted.setdefault(member.reads.value.name, set()).add(member.reads.axis)
    return wanted


Decoder = tuple[np.ndarray | str, np.ndarray | str]  # scale and zero point: constants or tensors to read


def consumers(groups: Iterable[Group]) -> list[Member]:
    """The consumer members (weights reading channels) of `groups`."""
    return [member for group in groups for member in group.members if member.reads is not None]


def quantized_reads(members: Iterable[Member]) -> dict[str, Decoder]:
    """Tensors read by consumer `members` that hold quantized integers → how to read their real values: the
    constant scale and zero point of the QLinear op reading them, or the per-call ones of the
    DynamicQuantizeLinear making them."""
    decoders: dict[str, Decoder] = {}
    for member in members:
        value = member.reads.value
        producer = value.producer()
        rule = ops.lookup(producer) if producer is not None else None
        if rule is not None and rule.quantizes:
            decoders[value.name] = (producer.outputs[1].name, producer.outputs[2].name)
            continue
        rule = ops.lookup(member.node)
        index = next((i for i, v in enumerate(member.node.inputs) if v is value), -1)
        encoding = rule.activation_encoding(member.node, index) if rule is not None else None
        if encoding is not None:
            decoders[value.name] = (encoding.scale, encoding.zero_point)
    return decoders


def decoded(array: np.ndarray, decoder: Decoder | None, outputs: dict[str, np.ndarray]) -> np.ndarray:
    """The real values `array` holds: dequantized by its decoder (constants, or tensors among `outputs`)."""
    if decoder is None:
        return array
    scale, zero = (outputs[p] if isinstance(p, str) else p for p in decoder)
    return ((array.astype(np.float64) - zero) * scale).astype(np.float32)


def session_exposing(model: ir.Model, names: list[str]):
    """An ORT session over `model` whose outputs also include the tensors `names` (the model is restored)."""
    values = {v.name: v for node in model.graph for v in node.outputs} | {v.name: v for v in model.graph.inputs}
    original = list(model.graph.outputs)
    extra = [values[n] for n in names if values[n] not in original]
    model.graph.outputs.extend(extra)
    try:
        return runtime.session(model)
    finally:
        model.graph.outputs.clear()
        model.graph.outputs.extend(original)


def calibrate(analysis: Analysis, batches: Iterable[Feeds], gram_limit: int = 0) -> Calibration:
    """Run `analysis.model` (before any rewrite) on `batches`; collect statistics for every observed axis,
    and the channel Gram matrix XᵀX (for second-order criteria) of axes with at most `gram_limit` channels."""
    wanted = observed_axes(analysis)
    decoders = quantized_reads(consumers(analysis.prunable()))
    routers = routing_plans(analysis)
    depth = [g for g in analysis.prunable() if g.blocks is not None]
    block_names = {v.name for g in depth for b in g.blocks for v in (b.stream, b.output)}
    per_call = {p for decoder in decoders.values() for p in decoder if isinstance(p, str)}
    names = sorted(set(wanted).union(per_call, block_names, *(plan.tensors() for plan in routers)))
    sess = session_exposing(analysis.model, names)
    source = getattr(batches, "source", "")
    result = Calibration(source=source)
    input_names = [i.name for i in sess.get_inputs()]
    with progress.step(f"calibrating on {source or 'the given batches'}"), \
            progress.bar(getattr(batches, "samples", None), "calibrating", "sample") as bar:
        for feeds in batches:
            try:
                arrays = sess.run(names, {k: v for k, v in feeds.items() if k in input_names})
            except Exception as exc:  # noqa: BLE001 - ORT raises several types
                raise GraphpruneError(f"calibration: ONNX Runtime cannot run the model on {source or 'these inputs'}"
                                      f" ({first_line(exc)[:200]})") from exc
            outputs = dict(zip(names, arrays, strict=True))
            for plan in routers:
                result.routing[plan.logits[0]] = update(result.routing.get(plan.logits[0]), plan, outputs)
            for group in depth:
                stats = result.blocks.setdefault(group.id, BlockStats(np.zeros(group.size)))
                for unit, block in enumerate(group.blocks):
                    stats.update(unit, outputs[block.stream.name], outputs[block.output.name])
            for name, array in outputs.items():
                if name in wanted:
                    array = decoded(array, decoders.get(name), outputs)
                for axis in wanted.get(name, ()):
                    matrix = result.matrix if array.shape[axis] <= gram_limit else None
                    result.stats.setdefault((name, axis), ChannelStats()).update(array, axis, matrix)
            count = next(iter(feeds.values())).shape[0]
            result.samples += count
            bar.update(count)
    if result.samples == 0:
        raise GraphpruneError("calibration data held no samples")
    log.info("calibrated on %d samples from %s", result.samples, source or "the given batches")
    return result


