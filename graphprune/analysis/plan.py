"""A pruning plan: which units of which groups to remove. Human-readable JSON, stable across runs."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx_ir as ir

from graphprune.analysis.groups import Group
from graphprune.errors import PlanError
from graphprune.io.load import unmap
from graphprune.io.staging import staging_folder

SAMPLE_BYTES = 1 << 16  # bytes of each weight that enter a fingerprint


def fingerprint(model: ir.Model) -> str:
    """A digest of what a plan depends on: every node (op, attributes, value names) and every initializer
    (name, type, shape, and a strided sample of its bytes — bounded work on multi-GB models)."""
    digest = hashlib.sha256()
    for node in model.graph:
        attrs = sorted((name, repr(attr.value)) for name, attr in node.attributes.items()
                       if attr.type not in (ir.AttributeType.TENSOR, ir.AttributeType.GRAPH))
        digest.update(repr((node.domain, node.op_type, [v.name if v else "" for v in node.inputs],
                            [v.name for v in node.outputs], attrs)).encode())
    for name, value in sorted(model.graph.initializers.items()):
        tensor = value.const_value
        digest.update(repr((name, str(tensor.dtype) if tensor else None, tensor.shape if tensor else None)).encode())
        if tensor is not None:
            digest.update(_sample(tensor.numpy()))
    unmap(model)  # a sample per page touches every page: release them
    return digest.hexdigest()


def _sample(array: np.ndarray) -> bytes:
    """About SAMPLE_BYTES bytes spread evenly over `array` (memory-mapped data is only touched there)."""
    if array.dtype == object:  # string tensors
        return repr(array.reshape(-1)[:256].tolist()).encode()
    flat = array.reshape(-1).view(np.uint8)
    step = max(1, flat.size // SAMPLE_BYTES)
    return np.ascontiguousarray(flat[::step][:SAMPLE_BYTES]).tobytes()


def check_made_for(meta: dict, plan_path: str | Path, model_fingerprint: str, model_path: str | Path) -> None:
    """Refuse a plan (its `meta`) recorded as made for a model with another fingerprint."""
    made_for = meta.get("model") or {}
    if made_for.get("fingerprint") not in (None, model_fingerprint):
        raise PlanError(f"{plan_path} was made for model {made_for.get('file', '?')} (fingerprint "
                        f"{made_for['fingerprint'][:12]}), not for {model_path} ({model_fingerprint[:12]})")


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
        """Write the plan atomically (staged beside it, then renamed); missing folders are created."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with staging_folder(path.parent) as folder:
            (folder / path.name).write_text(self.to_json(groups))
            os.replace(folder / path.name, path)

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
