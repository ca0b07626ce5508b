"""A pruning plan: which units of which groups to remove. Human-readable JSON, stable across runs."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from graphprune.errors import PlanError
from graphprune.groups import Group


@dataclass
class PruningPlan:
    """Removed unit indices per group id, plus how they were chosen."""

    removed: dict[int, np.ndarray] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def remove(self, group: Group, units) -> None:
        units = np.unique(np.asarray(units, dtype=np.int64))
        if units.size == 0:
            return
        if group.frozen:
            raise PlanError(f"group {group.id} ({group.label}) is frozen: {'; '.join(group.frozen_reasons)}")
        if units.min() < 0 or units.max() >= group.size:
            raise PlanError(f"group {group.id} has {group.size} units; plan removes {units.tolist()}")
        if units.size >= group.size:
            raise PlanError(f"plan removes every unit of group {group.id} ({group.label})")
        if group.experts is not None and group.size - units.size < group.experts.top_k:
            raise PlanError(f"group {group.id} ({group.label}): removing {units.size} of {group.size} experts leaves "
                            f"{group.size - units.size}, fewer than the router's top-{group.experts.top_k}")
        self.removed[group.id] = units

    def is_empty(self) -> bool:
        return not self.removed

    def to_json(self, groups: list[Group]) -> str:
        entries = [
            {"group": gid, "label": groups[gid].label, "size": groups[gid].size, "removed": units.tolist()}
            for gid, units in sorted(self.removed.items())
        ]
        return json.dumps({"meta": self.meta, "groups": entries}, indent=1)

    def save(self, path: str | Path, groups: list[Group]) -> None:
        Path(path).write_text(self.to_json(groups))

    @staticmethod
    def read_meta(path: str | Path) -> dict:
        """A plan file's meta (how it was made) without checking it against a model."""
        try:
            return dict(json.loads(Path(path).read_text()).get("meta", {}))
        except (OSError, ValueError, AttributeError) as exc:
            raise PlanError(f"{path}: not a graphprune plan ({exc})") from exc

    @classmethod
    def load(cls, path: str | Path, groups: list[Group]) -> "PruningPlan":
        """Read a plan and check it against `groups` (same ids, labels and sizes)."""
        try:
            data = json.loads(Path(path).read_text())
            entries, meta = data["groups"], data.get("meta", {})
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise PlanError(f"{path}: not a graphprune plan ({exc})") from exc
        plan = cls(meta=meta)
        for entry in entries:
            gid = entry["group"]
            if gid >= len(groups) or groups[gid].label != entry["label"] or groups[gid].size != entry["size"]:
                raise PlanError(f"{path}: group {gid} ({entry['label']}) does not match this model")
            plan.remove(groups[gid], entry["removed"])
        return plan
