"""The default method: what `prune` runs when it is given no criterion, chosen by the data it was given."""

from __future__ import annotations

from dataclasses import dataclass

from graphprune.passes.calibration.spec import CalibrationSpec


@dataclass(frozen=True)
class Method:
    """What `prune` runs when it is given no criterion, and why: chosen by the data it was given."""

    criterion: str
    sequential: bool
    allocation: str | None  # None: the user's (uniform unless said)
    depth: bool  # residual blocks compete with width (under measured allocation)
    why: str


def default_method(spec: CalibrationSpec) -> Method:
    """With calibration data, obs refit stage by stage on the pruned model's activations, its budget spent by
    measured sensitivity over width and residual blocks; data-free, the same but one-shot (refits on
    synthetic inputs do not help: stand-in recognizer 0.86–0.94 sequential against 0.95 one-shot); without
    data, l2. Measured at 20/30/50 % (bench_quality): measured allocation beats uniform everywhere on MiniLM
    and the Paddle text recognizer, depth adds up to +0.17 (white-noise data-free runs) and costs at most
    0.009; the digits CNN is unchanged or better. Data-free with --smooth-images, the recognizer at 30 %
    keeps 0.41 uniform, 0.81 measured, 0.95 with depth."""
    if spec.path is not None:
        return Method("obs", True, "measured", True, "default with calibration data")
    if spec.data_free:
        return Method("obs", False, "measured", True, "default with --data-free")
    return Method("l2", False, None, False, "default without calibration data")


def choose_method(spec: CalibrationSpec, criterion: str | None, sequential: bool, allocation: str | None,
                  depth: bool, free_hand: bool) -> Method:
    """The method a run uses: what the user named, and where no criterion was named, the default for the data
    given — its refit only with `free_hand` (no compensation, expert ratio or merge asked for), its allocation
    and depth only where the user chose no allocation. Under a latency target the measured allocation spends
    measured error per millisecond from the latency table."""
    if criterion is not None:
        return Method(criterion, sequential, allocation or "uniform", depth, "")
    method = default_method(spec)
    sequential = sequential or (method.sequential and free_hand)
    strategy = allocation or "uniform"
    if method.allocation and free_hand and allocation is None:
        strategy, depth = method.allocation, depth or method.depth
    return Method(method.criterion, sequential, strategy, depth, method.why)
