"""Ranking residual blocks (depth pruning): ShortGPT's block influence, 1 − mean cos(x, x + f(x)) over the
calibration samples — a block that barely changes its input goes first."""

from __future__ import annotations

import numpy as np

from graphprune.analysis.groups import Group
from graphprune.errors import GraphpruneError
from graphprune.passes.calibration.statistics import Calibration


def block_influence(calibration: Calibration | None, group: Group) -> np.ndarray:
    """Scores of a depth group's blocks (higher = keep), from the calibration run."""
    if calibration is None or group.id not in calibration.blocks:
        raise GraphpruneError("ranking residual blocks measures how much each changes its input: pass --calib FILE "
                              "or --data-free")
    return calibration.blocks[group.id].influence
