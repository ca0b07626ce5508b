"""Sequential reconstruction (the structured form of SparseGPT/OBC's layer-wise reconstruction).

Linear layers (weights read through a channel axis: Conv, Gemm, MatMul and their quantized forms) are visited in
stages along the graph. A stage holds the layers whose inputs are changed only by earlier stages; it calibrates
on the model as pruned and refit so far (x̂) beside the dense model (x), lets its groups re-pick which units go
(same count, scored on x̂), and refits each of its layers so that, on the pruned inputs, it reproduces the dense
layer's output: W' = M·W with

    M = argmin ‖[x̂_K, 1]·M − x‖² + λ‖M − I_K‖²        (K: kept input channels; the 1 where the layer has a bias)

The ridge pulls M towards leaving the layer unchanged, so a layer that lost nothing and whose inputs did not move
keeps its weights exactly. Convolutions are fitted per pixel over input channels (exact for 1x1 kernels, away
from padded borders for larger ones). Only one stage's statistics are held at a time.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import onnx_ir as ir

from graphprune import progress
from graphprune.analysis.blocks import bypass
from graphprune.analysis.coupling import Analysis
from graphprune.analysis.groups import Group, Member
from graphprune.analysis.plan import PruningPlan
from graphprune.analysis.weights import NORM_BLOCK, consumer_view, stored_weight
from graphprune.errors import GraphpruneError, first_line
from graphprune.io.runtime import prefix_session
from graphprune.io.scratch import contiguous_scratch, scratch_array
from graphprune.ir.model import uses_external_data
from graphprune.passes.calibration.sources import Feeds
from graphprune.passes.calibration.statistics import (
    Calibration,
    ChannelStats,
    consumers,
    decoded,
    quantized_reads,
    session_exposing,
)
from graphprune.passes.importance.obs import GRAM_LIMIT
from graphprune.passes.rewrite.compensation import add_to_bias, bias_of, per_output

log = logging.getLogger("graphprune")

CACHE_BYTES = 2 << 30  # dense activations held for all stages at most (else recomputed per stage)
CARRY_BYTES = 2 << 30  # pruned activations carried from stage to stage at most (else each stage runs from inputs)
RIDGE_RANGE = (0.01, 1.0)  # bounds of λ relative to the mean of diag(x̂ᵀx̂) over the kept channels (see ridge_for)
MIXING = {"Conv", "Gemm", "MatMul", "Attention", "QLinearConv", "ConvInteger", "QGemm", "QLinearMatMul",
          "MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "MatMulNBits"}
_CONV_LIKE = {"Conv", "QLinearConv", "ConvInteger"}

Rescorer = Callable[[Calibration], Callable[[Group], np.ndarray]]  # stage statistics → group → unit scores


@dataclass
class Layer:
    """One weight as a consumer of channels: the member describing it, the read positions the plan removes
    (over every group), and the stage it is refit at."""

    member: Member
    removed: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    stage: int = 0
    residual: ir.Value | None = None  # the stream r its output is added to (output + r), if any

    @property
    def read_key(self) -> tuple[str, int]:
        return self.member.reads.value.name, self.member.reads.axis

    @property
    def out_axis(self) -> int:
        """The channel axis of the layer's output."""
        return 1 if self.member.node.op_type in _CONV_LIKE else -1

    def mixing(self) -> bool:
        """Whether the layer is linear in the read channels at every position, so W' = M·W is exact algebra:
        a plain channel-mixing op whose other weight axes are outputs."""
        node, weight = self.member.node, self.member.value
        if node.op_type not in MIXING:
            return False
        rank = len(weight.shape) if weight.shape is not None else 0
        return node.op_type in _CONV_LIKE or node.op_type == "MatMulNBits" or rank == 2


EXACT_BYTES = 1 << 24  # moment matrices up to this size are summed in float64; larger ones in float32


def moment_type(rows: int, columns: int) -> type:
    """float64 for moment matrices of up to EXACT_BYTES (refits solved to the last digit), float32 beyond:
    half the memory where a stage's statistics are large (a 5632-wide layer: 254 → 127 MiB a matrix), and the
    ridge keeps the solve well conditioned (solved in float64 either way)."""
    return np.float64 if rows * columns * 8 <= EXACT_BYTES else np.float32


def accumulate(total: np.ndarray | None, addend: np.ndarray) -> np.ndarray:
    """`total + addend`, summed into `total` in place (no third matrix) once there is one."""
    if total is None:
        return addend
    total += addend
    return total


@dataclass
class PairStats:
    """Moments of one tensor axis in the pruned model (x̂: count, mean, Σx̂x̂ᵀ) and its cross moments with
    the dense model's (Σx̂xᵀ, Σx), accumulated batch by batch over the same inputs (one stage's worth at a
    time), in float64 or, for wide axes, float32 (see `moment_type`)."""

    hat: ChannelStats = field(default_factory=ChannelStats)
    gram: np.ndarray | None = None
    cross: np.ndarray | None = None
    dense_sum: np.ndarray | None = None

    def update(self, hat: np.ndarray, dense: np.ndarray, axis: int) -> None:
        self.hat.update(hat, axis)
        real = moment_type(hat.shape[axis], dense.shape[axis])
        rows_hat, rows = (np.moveaxis(a, axis, -1).reshape(-1, a.shape[axis]).astype(real, copy=False)
                        for a in (hat, dense))
        self.gram = accumulate(self.gram, rows_hat.T @ rows_hat)
        self.cross = accumulate(self.cross, rows_hat.T @ rows)
        self.dense_sum = accumulate(self.dense_sum, rows.sum(axis=0, dtype=np.float64))

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.gram, self.cross) if a is not None)


@dataclass
class ResidualStats:
    """For a layer whose output is added to a residual stream r: Σ x̂·(r − r̂)ᵀ and Σ (r − r̂), the drift of
    the stream the layer can also make up for."""

    cross: np.ndarray | None = None
    total: np.ndarray | None = None

    def update(self, hat: np.ndarray, axis: int, drift: np.ndarray, out_axis: int) -> bool:
        real = moment_type(hat.shape[axis], drift.shape[out_axis])
        rows_hat = np.moveaxis(hat, axis, -1).reshape(-1, hat.shape[axis]).astype(real, copy=False)
        rows = np.moveaxis(drift, out_axis, -1).reshape(-1, drift.shape[out_axis]).astype(real, copy=False)
        if len(rows) != len(rows_hat):
            return False
        self.cross = accumulate(self.cross, rows_hat.T @ rows)
        self.total = accumulate(self.total, rows.sum(axis=0, dtype=np.float64))
        return True


@dataclass
class NormalEquations:
    """[x̂_K, 1]ᵀ[x̂_K, 1] + λ (no damping on the constant), for right-hand sides given as (Σ x̂·t, Σ t)."""

    lhs: np.ndarray
    kept: np.ndarray
    damping: float
    intercept: bool

    @classmethod
    def of(cls, stats: PairStats, kept: np.ndarray, intercept: bool, ridge: float | None = None) -> "NormalEquations":
        """`ridge`: λ relative to the mean kept diagonal; by default `ridge_for` the rows seen."""
        gram = stats.gram[np.ix_(kept, kept)].astype(np.float64, copy=False)
        diagonal = np.diag(gram)
        ridge = ridge_for(len(kept), stats.hat.count) if ridge is None else ridge
        damping = ridge * (float(diagonal.mean()) if diagonal.size and diagonal.mean() > 0 else 1.0)
        lhs = gram + damping * np.eye(len(kept))
        if intercept:
            sums = stats.hat.mean[kept] * stats.hat.count
            lhs = np.block([[lhs, sums[:, None]], [sums[None, :], np.array([[float(stats.hat.count)]])]])
        return cls(lhs, kept, damping, intercept)

    def solve(self, cross: np.ndarray, total: np.ndarray) -> np.ndarray:
        return self.solve_kept(cross[self.kept], total)

    def solve_kept(self, rows: np.ndarray, total: np.ndarray) -> np.ndarray:
        """`solve` given the kept rows of the cross moments already."""
        return np.linalg.solve(self.lhs, np.vstack([rows, total[None, :]]) if self.intercept else rows)


def ridge_for(width: int, rows: int) -> float:
    """Relative ridge for a fit of `width` coefficients per output from `rows` samples: width / rows (the share
    of noise an unregularised fit absorbs), within RIDGE_RANGE. A 1x1 convolution seen at thousands of pixels
    per image is fitted almost freely; a squeeze-excite layer, one row per image, stays near its weights.
    (The real PP-OCRv4 recognizer at 30 %, sequential obs: a fixed 0.3 kept 0.16 of its reading, this 0.75.)"""
    return float(np.clip(width / max(rows, 1), *RIDGE_RANGE))


def mixing_matrix(equations: NormalEquations, stats: PairStats) -> np.ndarray:
    """M (rows: kept channels, then the constant when the equations have one; columns: every dense channel)
    minimising ‖[x̂_K, 1]·M − x‖² + λ‖M − I_K‖² from the accumulated moments (the pull towards I_K added to
    the kept rows only: no second d×d matrix)."""
    rows = stats.cross[equations.kept]
    rows[np.arange(len(equations.kept)), equations.kept] += equations.damping
    return equations.solve_kept(rows, stats.dense_sum)


def plan_layers(analysis: Analysis, plan: PruningPlan, bypassed: frozenset[int] = frozenset()) -> list[Layer]:
    """Every weight that reads removed channels or whose inputs change, with its stage: the number of such
    weights on the longest path before it (graph order). `bypassed`: ids of nodes whose output changes before
    any stage (the Adds of removed residual blocks)."""
    layers: dict[tuple[int, int], Layer] = {}
    for member in consumers(analysis.groups):
        layers.setdefault((id(member.value), member.axis), Layer(member))
    for gid, units in plan.removed.items():
        for member in consumers([analysis.group(gid)]):
            layer = layers[(id(member.value), member.axis)]
            layer.removed = np.union1d(layer.removed, member.positions(units))
    by_node: dict[int, list[Layer]] = {}
    for layer in layers.values():
        by_node.setdefault(id(layer.member.node), []).append(layer)
    level: dict[int, int] = {}
    chosen = []
    for node in analysis.model.graph:
        out = max((level.get(id(v), 0) for v in node.inputs if v is not None), default=0)
        out = max(out, 1) if id(node) in bypassed else out
        for layer in by_node.get(id(node), []):
            read = level.get(id(layer.member.reads.value), 0)
            if layer.removed.size or read and layer.mixing():
                layer.stage, layer.residual = read, residual_input(node)
                chosen.append(layer)
                out = max(out, read + 1)
        for value in node.outputs:
            level[id(value)] = out
    return chosen


def residual_input(node: ir.Node) -> ir.Value | None:
    """The computed tensor r that `node`'s output (after its bias Add, if any) is added to, shape for shape."""
    out = node.outputs[0]
    uses = out.uses()
    if len(uses) == 1 and uses[0].node.op_type == "Add" and bias_of(node) is not None and node.op_type == "MatMul":
        out = uses[0].node.outputs[0]
        uses = out.uses()
    if len(uses) != 1 or uses[0].node.op_type != "Add":
        return None
    other = uses[0].node.inputs[1 - uses[0].idx]
    same = other is not None and other.shape is not None and out.shape is not None and other.shape == out.shape
    return other if same and other.const_value is None else None


@dataclass
class ReconstructionReport:
    """What a reconstruction did and cost: stages (forward passes: one or two per stage), layers refit (and
    masked only: non-mixing or too wide), groups whose units were re-picked, seconds, peak statistics bytes."""

    stages: int = 0
    refit: int = 0
    masked_only: int = 0
    repicked: int = 0
    seconds: float = 0.0
    peak_bytes: int = 0

    def as_meta(self) -> dict:
        return {"stages": self.stages, "layers refit": self.refit, "layers masked only": self.masked_only,
                "groups re-picked": self.repicked, "seconds": round(self.seconds, 2),
                "statistics MiB": round(self.peak_bytes / 2**20, 1)}


def reconstruct(analysis: Analysis, plan: PruningPlan, batches: list[Feeds], rescore: Rescorer | None = None,
                ridge: float | None = None) -> ReconstructionReport:
    """Refit, in place and stage by stage, every weight of `analysis.model` the plan affects (removed input
    rows become 0: the model is then the plan's masked reference, compensated); with `rescore`, groups whose
    consumers all sit in one stage re-pick their units (same count) from scores on the pruned activations,
    updating `plan`. `batches` run once through the dense model (its values held, up to CACHE_BYTES) and once
    per stage through the pruned one, cut to what the stage reads."""
    if any(analysis.group(gid).experts is not None for gid in plan.removed):
        raise GraphpruneError("sequential reconstruction does not remove MoE experts yet: drop --sequential or "
                              "--expert-ratio")
    start, report = time.perf_counter(), ReconstructionReport()
    blocks = [analysis.group(gid).blocks[unit] for gid, units in plan.removed.items()
              if analysis.group(gid).blocks is not None for unit in units.tolist()]
    dead = {id(node) for block in blocks for node in block.nodes}
    bypassed = frozenset(id(block.add) for block in blocks)
    layers = [layer for layer in plan_layers(analysis, plan, bypassed) if id(layer.member.node) not in dead]
    stages = sorted({layer.stage for layer in layers})
    decoders = quantized_reads([layer.member for layer in layers])
    streams = {layer.residual.name for layer in layers if layer.residual is not None}
    reads = sorted({layer.read_key[0] for layer in layers} | streams)
    dense = _Dense(analysis.model, _with_decoders(reads, decoders), decoders, batches)
    for block in blocks:  # removed residual blocks leave their stream, as the rewrite will
        bypass(block)
    carried = _Carried(analysis.model, batches)
    with progress.step("reconstructing"), progress.bar(len(stages), "reconstructing", "stage") as bar:
        for stage in stages:
            members = [layer for layer in layers if layer.stage == stage]
            stats, drifts = _stage_stats(carried, members, batches, dense, decoders, first=stage == 0)
            held = sum(s.nbytes for s in stats.values()) + sum(d.cross.nbytes for d in drifts.values())
            report.peak_bytes = max(report.peak_bytes, held)
            if rescore is not None:
                report.repicked += _repick(analysis, plan, members, stats, rescore)
            for layer in members:
                refit = _refit(layer, stats.get(layer.read_key), drifts.get(id(layer)), ridge)
                report.refit += refit
                report.masked_only += not refit
            carried.advance(members)
            report.stages += 1
            bar.update(1)
    report.seconds = time.perf_counter() - start
    log.info("reconstruction: %d stages, %d layers refit, %d masked only, %.1f s, statistics %.1f MiB",
             report.stages, report.refit, report.masked_only, report.seconds, report.peak_bytes / 2**20)
    return report


def _with_decoders(names: list[str], decoders: dict) -> list[str]:
    per_call = {p for name in names for p in decoders.get(name, ()) if isinstance(p, str)}
    return sorted(set(names) | per_call)


class _Runner:
    """Fetches tensors by name for a batch and returns their real values (quantized activations decoded)."""

    def __init__(self, fetch: Callable[[list[str], int, Feeds], list[np.ndarray]], decoders: dict) -> None:
        self.fetch, self.decoders = fetch, decoders

    def run(self, names: list[str], index: int, feeds: Feeds) -> dict[str, np.ndarray]:
        wanted = _with_decoders(names, self.decoders)
        try:
            arrays = dict(zip(wanted, self.fetch(wanted, index, feeds), strict=True))
        except Exception as exc:  # noqa: BLE001 - ORT raises several types
            raise GraphpruneError(f"reconstruction: ONNX Runtime cannot run the model ({first_line(exc)[:200]})") \
                from exc
        return {name: decoded(arrays[name], self.decoders.get(name), arrays) for name in names}


def _fetching(sess) -> Callable[[list[str], int, Feeds], list[np.ndarray]]:
    """Fetching from one session that computes everything from the batch's own inputs."""
    inputs = [i.name for i in sess.get_inputs()]
    return lambda names, _, feeds: sess.run(names, {k: v for k, v in feeds.items() if k in inputs})


class _Dense:
    """The dense model's values of every tensor a stage reads: computed in one pass over the batches and held
    (the stages then run only the pruned model), or, past `CACHE_BYTES`, computed again for each stage."""

    def __init__(self, model: ir.Model, reads: list[str], decoders: dict, batches: list[Feeds]) -> None:
        self.runner = _Runner(_fetching(session_exposing(model, reads)), decoders)
        self.cache: list[dict[str, np.ndarray]] | None = []
        spent = 0
        for index, feeds in enumerate(batches if reads else []):  # (a plan that affects no layer reads nothing)
            self.cache.append(self.runner.run(reads, index, feeds))
            spent += sum(array.nbytes for array in self.cache[-1].values())
            if spent * len(batches) / len(self.cache) > CACHE_BYTES:
                log.info("reconstruction: the dense activations would pass %d MiB; computing them per stage",
                         CACHE_BYTES >> 20)
                self.cache = None
                break
        if self.cache is not None:
            self.runner = None  # every value is held: the session is not needed again

    def values(self, index: int, names: list[str], feeds: Feeds) -> dict[str, np.ndarray]:
        if self.cache is None:
            return self.runner.run(names, index, feeds)
        return {name: self.cache[index][name] for name in names}


class _Carried:
    """The pruned model's tensors that flow past each stage's prefix, held per batch, so that the next stage
    runs from them instead of from the graph inputs: one pass over the graph for all the stages, not one a
    stage. A stage's refit drops what lies downstream of the weights it changed; past `CARRY_BYTES` (or for
    weights in external data) every stage runs from the inputs."""

    def __init__(self, model: ir.Model, batches: list[Feeds]) -> None:
        self.model, self.held, self.carrying = model, [{} for _ in batches], True
        self.done: set[str] = set()  # tensors computed from the model as it now is, held or not
        self.spent: list[str] = []  # held tensors whose readers have all run

    def runner(self, names: list[str], decoders: dict) -> _Runner:
        """A runner for the stage's tensors `names` (its decoders' among them) on the model as it is now."""
        if uses_external_data(self.model):
            return _Runner(_fetching(session_exposing(self.model, names)), decoders)
        given = dict(self.held[0])
        computed = [n for n in names if n not in given]
        sess = prefix_session(self.model, computed, given, passing=self.carrying) if computed else None
        inputs = {i.name for i in sess.get_inputs()} if sess is not None else set()
        outputs = [o.name for o in sess.get_outputs()] if sess is not None else []
        values = {v.name: v for node in self.model.graph for v in node.outputs}
        self.done |= _upstream(values, computed, given)
        self.spent = [name for name in given if all(
            all(v.name in self.done for v in use.node.outputs) for use in values[name].uses())]

        def fetch(wanted: list[str], index: int, feeds: Feeds) -> list[np.ndarray]:
            held, arrays = self.held[index], {}
            if sess is not None:
                fed = {k: v for k, v in {**feeds, **held}.items() if k in inputs}
                arrays = dict(zip(outputs, sess.run(outputs, fed), strict=True))
                if self.carrying:
                    held.update(arrays)
            return [arrays[name] if name in arrays else held[name] for name in wanted]
        return _Runner(fetch, decoders)

    def advance(self, layers: list[Layer]) -> None:
        """After a stage that changed `layers`' weights: forget what lies downstream of them and of every other
        reader of those weights, and what no later stage reads; past the memory budget, forget everything and
        run each later stage from the inputs."""
        weights = [stored.value for layer in layers if (stored := stored_weight(layer.member.value)) is not None]
        frontier = [layer.member.node for layer in layers] + [use.node for v in weights for use in v.uses()]
        seen, stale = set(), set(self.spent)
        while frontier:
            node = frontier.pop()
            if id(node) not in seen:
                seen.add(id(node))
                for value in node.outputs:
                    stale.add(value.name)
                    self.done.discard(value.name)
                    frontier.extend(use.node for use in value.uses())
        for held in self.held:
            for name in stale & held.keys():
                del held[name]
        if sum(a.nbytes for held in self.held for a in held.values()) > CARRY_BYTES:
            log.info("reconstruction: carried activations would pass %d MiB; running each stage from the inputs",
                     CARRY_BYTES >> 20)
            self.carrying = False
            self.held = [{} for _ in self.held]


def _upstream(values: dict[str, ir.Value], names: list[str], given: dict) -> set[str]:
    """The tensors produced by the nodes that compute `names` from `given` and the graph's inputs."""
    produced, stack = set(), list(names)
    while stack:
        name = stack.pop()
        node = values[name].producer() if name in values and name not in produced else None
        if node is not None:
            produced.update(v.name for v in node.outputs)
            stack.extend(v.name for v in node.inputs if v is not None and v.name not in given)
    return produced


def _stage_stats(carried: _Carried, members: list[Layer], batches: list[Feeds], dense: _Dense, decoders: dict,
                 first: bool) -> tuple[dict[tuple[str, int], PairStats], dict[int, ResidualStats]]:
    """Pair statistics of every tensor axis the stage's layers read (no wider than GRAM_LIMIT channels), and
    per layer adding into a residual stream, that stream's drift; the first stage reads tensors no pruning has
    changed, so the dense run serves both sides (and nothing has drifted)."""
    keys = sorted({layer.read_key for layer in members})
    drifting = [layer for layer in members if layer.residual is not None and not first]
    names = sorted({name for name, _ in keys} | {layer.residual.name for layer in drifting})
    pruned = None if first else carried.runner(_with_decoders(names, decoders), decoders)
    stats: dict[tuple[str, int], PairStats] = {}
    drifts: dict[int, ResidualStats] = {}
    for index, feeds in enumerate(batches):
        reference = dense.values(index, names, feeds)
        current = reference if pruned is None else pruned.run(names, index, feeds)
        for name, axis in keys:
            if reference[name].shape[axis] <= GRAM_LIMIT:
                stats.setdefault((name, axis), PairStats()).update(current[name], reference[name], axis)
        for layer in list(drifting):
            name, axis = layer.read_key
            stream = layer.residual.name
            if not drifts.setdefault(id(layer), ResidualStats()).update(
                    current[name], axis, reference[stream] - current[stream], layer.out_axis):
                drifting.remove(layer)
                del drifts[id(layer)]
    return stats, drifts


def _repick(analysis: Analysis, plan: PruningPlan, members: list[Layer],
            stats: dict[tuple[str, int], PairStats], rescore: Rescorer) -> int:
    """Re-pick the removed units of the planned groups whose consumers all sit in this stage, from scores on
    the pruned activations; update the stage's layers' removed rows. Returns how many groups changed."""
    here = {(id(layer.member.value), layer.member.axis) for layer in members}
    calibration = Calibration(stats={key: replace(pair.hat, gram=pair.gram) for key, pair in stats.items()},
                              source="reconstruction")
    scorer, changed = None, 0
    for gid in sorted(plan.removed):
        group = analysis.group(gid)
        readers = consumers([group])
        if not readers or any((id(m.value), m.axis) not in here or m.reads.value.name not in
                              {k[0] for k in stats} for m in readers):
            continue
        scorer = scorer or rescore(calibration)
        old = plan.removed[gid]
        new = np.sort(np.argsort(scorer(group), kind="stable")[: len(old)])
        if np.array_equal(new, old):
            continue
        plan.removed[gid] = new
        changed += 1
    if changed:
        by_key = {(id(layer.member.value), layer.member.axis): layer for layer in members}
        for layer in members:
            layer.removed = np.zeros(0, dtype=np.int64)
        for gid, units in plan.removed.items():
            for member in consumers([analysis.group(gid)]):
                layer = by_key.get((id(member.value), member.axis))
                if layer is not None:
                    layer.removed = np.union1d(layer.removed, member.positions(units))
    return changed


def _refit(layer: Layer, stats: PairStats | None, drift: ResidualStats | None, ridge: float | None) -> bool:
    """Refit one layer in place (its removed rows zeroed), also making up for the drift of the residual stream
    it adds into where its weight maps straight to output channels; without statistics, or for a layer that
    does not mix channels linearly, only zero the removed rows. Returns whether it was refit."""
    view = consumer_view(layer.member)
    rows = view.read_rows()
    kept = np.setdiff1d(np.arange(rows.shape[0]), layer.removed)
    real = np.result_type(rows.dtype, np.float32)
    if stats is None or not layer.mixing():
        masked = scratch_array(rows.shape, real)
        masked[kept] = rows[kept]
        view.weight.store(contiguous_scratch(view.dense_from(masked)))
        return False
    node = layer.member.node
    rest = [n for a, n in enumerate(view.weight.value.const_value.shape) if a != view.axis]
    intercept = view.block == 1 and bias_of(node) is not None and \
        node.inputs.index(layer.member.value) > 0 and per_output(node, np.zeros(rest)) is not None
    equations = NormalEquations.of(stats, kept, intercept, ridge)
    mixing = mixing_matrix(equations, stats)
    correction = equations.solve(drift.cross, drift.total) \
        if drift is not None and drift.cross.shape[1] == rows.shape[1] else None
    refit = scratch_array(rows.shape, real)
    bias = np.zeros(rows.shape[1]) if intercept else None
    step = max(1, NORM_BLOCK // max(rows.shape[0], 1))  # output columns solved at a time, in float64
    for start in range(0, rows.shape[1], step):
        columns = slice(start, start + step)
        block = mixing @ rows[:, columns].astype(np.float64)
        if correction is not None:
            block += correction[:, columns]
        refit[kept, columns] = block[: len(kept)]
        if intercept:
            bias[columns] = block[-1]
    view.weight.store(contiguous_scratch(view.dense_from(refit)))
    if intercept:
        add_to_bias(node, per_output(node, bias.reshape(rest)))
    return True
