"""What a run is asked: what to prune and how (`PruneRequest`), where to write and how to check it (`Output`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from graphprune.errors import GraphpruneError
from graphprune.io.outputs import check_outputs
from graphprune.passes.allocation.spec import MEASURED_NEEDS_DATA, Allocation
from graphprune.passes.calibration.spec import CalibrationSpec
from graphprune.passes.importance import criterion_class, needs_data
from graphprune.passes.rewrite.tokens import TokenSchedule

EXPERT_CRITERION = "router-similarity"  # weights only, so expert pruning needs no data by default


@dataclass
class PruneRequest:
    """What to prune and how. `criterion` scores units (`options`: its settings); `ratio` (per kind:
    `kind_ratios`) or `allocation` says how many go; `prune_hidden` allows approximate groups (the hidden
    dimension under normalisation). Criteria that need data, and compensation (`compensate`; default: what
    the criterion declares, bias for flap, weights for obs), calibrate first on `calibration`.
    `expert_merge` folds removed experts into their nearest survivors (weighted by calibration gate weight
    when there is calibration data, else equally) instead of dropping them. `sequential` prunes stage by
    stage on the pruned model's own activations and refits the affected layers by least squares (its
    compensation, replacing bias and OBS compensation). `depth` also offers whole residual blocks (kind
    "block", removed by the "block" kind ratio or a measured allocation; ranked on calibration data).
    `tokens` also compiles token reduction into the graph (see `graphprune.passes.rewrite.tokens`); with
    `token_target` its per-block rates are measured to bring the MACs to that fraction (`passes/allocation/tokens`);
    with `joint_tokens` they share the allocation's FLOPs or latency target with the widths (`allocation/joint`).
    `validate` (the default method: obs, measured allocation, sequential refit) keeps whichever of it and its
    simpler forms has the least output error on held-out calibration batches (`pipeline/validation`)."""

    criterion: str = "l2"
    ratio: float = 0.5
    round_to: int = 1
    seed: int = 0
    kind_ratios: dict[str, float] | None = None
    prune_hidden: bool = False
    calibration: CalibrationSpec | None = None
    compensate: bool | None = None
    allocation: Allocation | None = None
    options: dict | None = None
    gqa_units: str = "kv-group"
    expert_criterion: str = EXPERT_CRITERION
    expert_merge: bool = False
    sequential: bool = False
    depth: bool = False
    tokens: TokenSchedule | None = None
    token_target: float | None = None  # MACs fraction the token keep rates are measured to reach (tokens only)
    joint_tokens: bool = False  # the keep rates measured beside the widths, under the allocation's one target
    validate: bool = False  # the default method chosen among its simpler forms on held-out calibration data

    @property
    def spec(self) -> CalibrationSpec:
        return self.calibration or CalibrationSpec()

    @property
    def compensates(self) -> bool:
        """Whether removals get compensation: as asked, else as the criterion declares (never when refitting)."""
        if self.compensate is not None:
            return self.compensate
        return criterion_class(self.criterion).compensation is not None and not self.sequential

    @property
    def removes_experts(self) -> bool:
        return self.allocation is not None and self.allocation.expert_ratio > 0

    @property
    def measures(self) -> bool:
        return self.allocation is not None and self.allocation.strategy == "measured"

    def analysis_options(self) -> dict:
        """The `analyze` options this request implies."""
        return {"allow_approximate": self.prune_hidden, "gqa_units": self.gqa_units, "depth": self.depth}

    def check(self) -> None:
        """Refuse a request that cannot work, before any file is read."""
        spec, compensate = self.spec, self.compensates
        if self.tokens is not None:
            self.tokens.check()
        if self.token_target is not None and (self.tokens is None or self.requested()):
            raise GraphpruneError("--tokens auto with --ratio 0 spends --target-flops on token reduction alone: give "
                                  "no width ratio or other target with it")
        if self.tokens is not None and self.depth:
            raise GraphpruneError("--tokens with depth pruning (--depth, --block-ratio): a removed residual block "
                                  "moves the blocks token reduction goes before; give one of them")
        if self.joint_tokens:
            target = self.allocation.target if self.allocation is not None else None
            if self.tokens is None or not self.measures or target is None or target[0] == "params":
                raise GraphpruneError("--tokens auto spends one --target-flops or --target-latency on tokens and "
                                      "widths together, measured on calibration data: pass --calib FILE or "
                                      "--data-free with the default method (or --ratio 0 for tokens alone)")
            if self.allocation.kind_ratios or self.allocation.expert_ratio:
                raise GraphpruneError("--tokens auto spends one target over tokens and widths: give no per-kind or "
                                      "expert ratio with it")
        if self.validate and not self.validates():
            raise GraphpruneError("choosing the method on held-out data (validate) compares the default method's "
                                  "forms: it needs criterion obs, the measured allocation refit sequentially, a "
                                  "--calib file, and no latency target, --max-error, tokens or experts")
        if self.depth and not spec.wanted():
            raise GraphpruneError("depth pruning ranks residual blocks on calibration data: pass --calib FILE or "
                                  "--data-free")
        if self.measures and not spec.wanted():
            raise GraphpruneError(MEASURED_NEEDS_DATA)
        floor = self.allocation.max_error if self.allocation is not None else None
        if floor is not None:
            if not 0 < floor < 1:
                raise GraphpruneError(f"--max-error is a relative squared error in (0, 1), got {floor:g}")
            if self.allocation.target is not None:
                raise GraphpruneError("--max-error and a --target-… are two different stops: give one")
            if not self.measures:
                raise GraphpruneError("--max-error judges removals on held-out calibration data with the measured "
                                      "allocation: pass --calib FILE or --data-free, without --allocation or "
                                      "--criterion other than the default")
        if self.sequential and (compensate or self.expert_merge or self.removes_experts):
            raise GraphpruneError("--sequential refits layers itself: it does not combine with --compensate, "
                                  "--expert-ratio or --expert-merge")
        for name in [self.criterion] + ([self.expert_criterion] if self.removes_experts else []):
            if (needs_data(name) or compensate or self.sequential) and not spec.wanted():
                need = "bias compensation" if compensate else "--sequential" if self.sequential else \
                    f"criterion {name!r}"
                raise GraphpruneError(f"{need} needs calibration data: pass --calib FILE or --data-free")
        spec.check()

    def validates(self) -> bool:
        """Whether the run is the default method in a form held-out validation can choose among."""
        allocation = self.allocation
        return self.criterion == "obs" and self.measures and self.sequential and self.spec.path is not None \
            and self.tokens is None and allocation.max_error is None and not allocation.expert_ratio \
            and (allocation.target is None or allocation.target[0] != "latency")

    def requested(self) -> bool:
        """Whether the run asks to remove anything (a ratio, a per-kind ratio, an expert ratio or a target)."""
        allocation = self.allocation
        if allocation is not None and (allocation.target is not None or allocation.expert_ratio > 0
                                       or allocation.max_error is not None):
            return True
        ratios = allocation.kind_ratios if allocation is not None and allocation.kind_ratios else self.kind_ratios
        ratio = allocation.ratio if allocation is not None else self.ratio
        return ratio > 0 or any(v > 0 for v in (ratios or {}).values())


@dataclass
class Output:
    """Where a run writes (`model`; `plan`, the plan as JSON, optional) and how its result is checked:
    `feeds` (arrays keyed by input name) or random inputs sized by `dims` for symbolic axes. A `dry_run`
    writes no model (only the plan, if asked) and reports projected costs. `reads`: other files the run reads
    (feeds, calibration data, a plan), which it must not overwrite either. `optimize`: a model type for ONNX
    Runtime's transformer optimizer ("bert", "gpt2"…), whose fusions are kept when they compute the same."""

    model: str | os.PathLike | None = None
    plan: str | os.PathLike | None = None
    dry_run: bool = False
    feeds: dict[str, np.ndarray] | None = None
    dims: dict[str, int] | None = None
    reads: tuple[str | os.PathLike, ...] = ()
    optimize: str | None = None  # fuse with ONNX Runtime's transformer optimizer for this model type

    def check(self, read: list[Path]) -> None:
        """Refuse unusable or unsafe locations: nothing written may be one of the files in `read`."""
        if self.model is None and not self.dry_run:
            raise GraphpruneError("no output path given (or ask for a dry run)")
        check_outputs(self.model if not self.dry_run else None, read, self.plan)
