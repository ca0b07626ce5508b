"""Importance criteria registry: each criterion scores every unit of a group (higher = keep)."""

from __future__ import annotations

from typing import Callable

import numpy as np

from graphprune.analysis.coupling import Analysis
from graphprune.analysis.groups import Group
from graphprune.errors import GraphpruneError
from graphprune.passes.calibration.statistics import Calibration


class Criterion:
    """Scores units of a group (higher = keep). What a criterion needs and provides is declared here, so the
    pipeline asks the criterion instead of checking names."""

    name: str
    needs_data = False  # reads calibration statistics
    for_experts = False  # scores MoE experts (--expert-criterion) rather than channels, heads and neurons
    compensation: str | None = None  # what removals get by default: "bias" (mean shift), "weights" (OBS update)
    gram_limit = 0  # widest consumer input whose Gram matrix calibration gathers for it

    def __init__(self, calibration: Calibration | None = None, seed: int = 0, options: dict | None = None) -> None:
        if self.needs_data and calibration is None:
            raise GraphpruneError(f"criterion {self.name!r} needs calibration data: pass --calib FILE or --data-free")
        self.calibration = calibration
        self.seed = seed
        self.options = options or {}

    def score(self, analysis: Analysis, group: Group) -> np.ndarray:
        raise NotImplementedError


_CRITERIA: dict[str, Callable[..., Criterion]] = {}


def register_criterion(name: str) -> Callable:
    """Class decorator registering a criterion under `name`."""

    def decorate(cls):
        if name in _CRITERIA:
            raise ValueError(f"duplicate criterion {name!r}")
        cls.name = name
        _CRITERIA[name] = cls
        return cls

    return decorate


def criterion_class(name: str) -> type[Criterion]:
    """The class registered as `name` (its declared needs, without making one)."""
    if name not in _CRITERIA:
        raise GraphpruneError(f"unknown criterion {name!r}; available: {', '.join(sorted(_CRITERIA))}")
    return _CRITERIA[name]


def get_criterion(name: str, calibration: Calibration | None = None, seed: int = 0,
                  options: dict | None = None) -> Criterion:
    """An instance of criterion `name`; `options` carries criterion-specific settings (e.g. policy_file)."""
    return criterion_class(name)(calibration=calibration, seed=seed, options=options)


def needs_data(name: str) -> bool:
    return criterion_class(name).needs_data


def criteria_for(experts: bool) -> list[str]:
    """Criteria that rank MoE experts (`experts`), or channels, heads and neurons."""
    return sorted(name for name, cls in _CRITERIA.items() if cls.for_experts == experts)
