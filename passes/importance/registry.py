"""Importance criteria registry: each criterion scores every unit of a group (higher = keep)."""

from __future__ import annotations

from typing import Callable, Protocol

import numpy as np

from graphprune.analysis import Analysis
from graphprune.groups import Group


class Criterion(Protocol):
    name: str

    def score(self, analysis: Analysis, group: Group) -> np.ndarray: ...


_CRITERIA: dict[str, Callable[[], Criterion]] = {}


def register_criterion(name: str) -> Callable:
    """Class decorator registering a criterion under `name`."""

    def decorate(cls):
        if name in _CRITERIA:
            raise ValueError(f"duplicate criterion {name!r}")
        cls.name = name
        _CRITERIA[name] = cls
        return cls

    return decorate


def get_criterion(name: str, **options) -> Criterion:
    if name not in _CRITERIA:
        raise KeyError(f"unknown criterion {name!r}; available: {', '.join(sorted(_CRITERIA))}")
    return _CRITERIA[name](**options)


def criteria() -> list[str]:
    return sorted(_CRITERIA)
