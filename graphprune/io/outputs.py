"""Output locations, checked before any work: a file graphprune writes must be creatable and must never be
one the input reads (the model, its external data), whatever path, symlink or hard link names it."""

from __future__ import annotations

import os
from pathlib import Path

from graphprune.errors import GraphpruneError
from graphprune.io.save import same_file


def check_location(path: str | os.PathLike, label: str = "output") -> Path:
    """Refuse a path that cannot become a file: an existing folder, a parent that is a file, a folder
    that cannot be written. Missing parent folders are fine (they are created)."""
    path = Path(path)
    if path.is_dir():
        raise GraphpruneError(f"{label} {path} is a folder; give a file name")
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise GraphpruneError(f"cannot write {label} {path}: {ancestor} is not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise GraphpruneError(f"cannot write {label} {path}: folder {ancestor} is not writable")
    return path


def check_distinct(written: list[Path], read: list[Path], label: str = "output") -> None:
    """Refuse when a file to be written is one the run reads (`read[0]`: the input model)."""
    for out in written:
        for source in read:
            if same_file(out, source):
                what = "the input model" if source == read[0] else f"{source}, which this run reads"
                raise GraphpruneError(f"writing {label} {out} would overwrite {what}; the input is never "
                                      "modified: choose another output path")


def check_outputs(model_path: str | os.PathLike | None, read: list[Path],
                  plan_path: str | os.PathLike | None = None) -> None:
    """All checks for one run: the model file, the optional plan file. (External data the model may get are
    named uniquely per run, so they cannot clash with anything; see `StagedModel`.)"""
    if model_path is not None:
        model_path = check_location(model_path)
        check_distinct([model_path], read)
    if plan_path is not None:
        plan_path = check_location(plan_path, "plan")
        check_distinct([plan_path], read, "plan")
        if model_path is not None and same_file(plan_path, model_path):
            raise GraphpruneError(f"plan {plan_path} and output model {model_path} would be the same file")
