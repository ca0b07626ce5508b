"""Verification: the checker, output comparison, and the masked reference a pruned model must match."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_ir as ir

from graphprune.errors import GraphpruneError, first_line
from graphprune.io import runtime
from graphprune.io.save import as_file, to_proto
from graphprune.ir.model import uses_external_data
from graphprune.verify.drift import max_relative_error, new_non_finite


class VerificationError(GraphpruneError):
    """The pruned model fails a check that the original model passes."""


@dataclass
class Verification:
    """Which checks a pruned model passed, which could not apply because the original fails them too, and how
    far its outputs drift from the original's on the same inputs (None where ORT cannot run both)."""

    passed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    drift: float | None = None
    inputs: str = "random inputs"


def check(model: ir.Model | str | os.PathLike, full_check: bool = True) -> None:
    """Run onnx.checker (with shape inference when full_check); raises onnx.checker.ValidationError."""
    if isinstance(model, ir.Model) and not uses_external_data(model):
        onnx.checker.check_model(to_proto(model), full_check=full_check)
        return
    with as_file(model) as path:
        onnx.checker.check_model(str(path), full_check=full_check)


SIDES = (1, 32, 224)  # sizes tried, smallest first, for symbolic non-batch axes until the original runs


def _checker_failures(model: ir.Model | str | os.PathLike) -> dict[str, str | None]:
    """Each checker's failure message for `model` (None where it passes)."""
    failures: dict[str, str | None] = {}
    for name, full in (("onnx.checker full_check", True), ("onnx.checker", False)):
        try:
            check(model, full_check=full)
            failures[name] = None
        except Exception as exc:  # noqa: BLE001 - the checker raises several types
            failures[name] = first_line(exc)
    return failures


def _run(model: ir.Model | str | os.PathLike, feeds: dict[str, np.ndarray] | None, dims: dict[str, int] | None,
         side: int) -> tuple[str | None, list[np.ndarray] | None]:
    """(failure message, None), or (None, outputs) of one ORT run on `feeds` or seeded random inputs."""
    try:
        sess = runtime.session(model)
        return None, runtime.run(sess, feeds if feeds is not None else runtime.random_feeds(sess, dims=dims, side=side))
    except Exception as exc:  # noqa: BLE001 - ORT raises several types
        return first_line(exc), None


def verify_like(original: ir.Model | str | os.PathLike, pruned: ir.Model | str | os.PathLike,
                feeds: dict[str, np.ndarray] | None = None, dims: dict[str, int] | None = None) -> Verification:
    """Hold `pruned` to every check `original` passes (checker, full_check, an ORT run on `feeds` or random
    inputs); raise VerificationError on the first it fails. Random inputs size symbolic non-batch axes by
    `dims`, else by the first of SIDES at which the original runs (exports often constrain them). Records the
    output drift between the two."""
    reference, actual = _checker_failures(original), _checker_failures(pruned)
    provider = runtime.provider_name()
    ran = "onnxruntime run" + ("" if provider == "CPUExecutionProvider" else f" on {provider}")
    for side in SIDES if feeds is None else SIDES[:1]:
        reference[ran], dense = _run(original, feeds, dims, side)
        if dense is not None:
            break
    actual[ran], pruned_outputs = _run(pruned, feeds, dims, side)
    inputs = "the given inputs" if feeds is not None else _random_sizes(dims, side)
    result = Verification(inputs=inputs)
    if dense is not None and pruned_outputs is not None:
        if broken := new_non_finite(dense, pruned_outputs):
            raise VerificationError(f"the pruned model outputs {broken} NaN or Inf value(s) where the original's "
                                    f"outputs are finite ({inputs})")
        result.drift = max_relative_error(dense, pruned_outputs)
    for name, reason in reference.items():
        if reason is not None:
            result.skipped.append(f"{name} (the original fails it too: {reason[:120]})")
        elif actual[name] is not None:
            raise VerificationError(f"the pruned model fails {name}: {actual[name]}")
        else:
            result.passed.append(name)
    return result


def _random_sizes(dims: dict[str, int] | None, side: int) -> str:
    """At which sizes random inputs ran: the --dim sizes, then the rest (leading symbolic axes 1, others `side`)."""
    if not dims:
        return f"random inputs, batch 1, other symbolic axes {side}"
    sized = ", ".join(f"{name}={size}" for name, size in sorted(dims.items()))
    return f"random inputs, {sized}, other symbolic axes {side}" + (", leading ones 1" if side != 1 else "")
