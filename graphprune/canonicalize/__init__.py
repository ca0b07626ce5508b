"""Canonicalisation: rewrite what exporters write differently into the forms the dimension rules model.

`prepare` normalises a loaded model for analysis: weights as initializers, negative declared sizes unknown,
shapes inferred (stale declarations reconciled), contrib ops' shapes filled in, then `CANONICALISATIONS` run
round after round, each round followed by shape inference, until a round changes nothing. The list below is
the one place canonicalisations are registered, in the order they run; `graphprune/canonicalize/folds.py`
explains each.
"""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common import LiftConstantsToInitializersPass

from graphprune.canonicalize.batch_merges import fold_batch_merges, fold_inferred_targets
from graphprune.canonicalize.broadcasts import unshare_broadcasts
from graphprune.canonicalize.constants import fold_constant_layouts, unshare_constants
from graphprune.canonicalize.folds import (
    fold_copied_targets,
    fold_pass_throughs,
    fold_static_shapes,
    fold_tensordots,
    fold_transpose_sandwiches,
    fold_zero_initial_states,
)
from graphprune.canonicalize.layout_chains import (
    fold_gather_slices,
    fold_gather_transposes,
    fold_picked_slices,
    fold_split_transposes,
)
from graphprune.canonicalize.passes import Fold, Reinferred, Settled, Swept
from graphprune.canonicalize.shapes import fill_unknown_shapes, infer_reconciled, unknown_negative_sizes
from graphprune.ir.model import DECLARED
from graphprune.ir.passes import PassManager

FILL_ROUNDS = 4  # contrib ops' shapes unlock ONNX inference after them, and so on
CANONICAL_ROUNDS = 5  # canonicalise ↔ re-infer shapes, while something changes

CANONICALISATIONS = Settled(
    PassManager([
        Fold(unshare_constants), Fold(unshare_broadcasts), Fold(fold_static_shapes),
        Swept(Fold(fold_constant_layouts)),  # folded layouts leave their nodes and sources dead: counted otherwise
        Fold(fold_pass_throughs), Fold(fold_copied_targets), Fold(fold_tensordots), Fold(fold_zero_initial_states),
        Swept(Fold(fold_picked_slices), Fold(fold_gather_transposes), Fold(fold_gather_slices),
              Fold(fold_split_transposes)),
        Fold(fold_transpose_sandwiches),
    ]),
    # only once the rest has settled: a constant -1 target loses the symbolic size inference related to it
    PassManager([Fold(fold_inferred_targets), Fold(fold_batch_merges)]),
)


def prepare(model: ir.Model) -> ir.Model:
    """Normalise a model for analysis in place (see the module docstring); returns it."""
    model.meta[DECLARED] = {v.name for node in model.graph for v in node.outputs if v.type is not None}
    LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
    unknown_negative_sizes(model)
    infer_reconciled(model)
    PassManager([Reinferred(Fold(fill_unknown_shapes))], steps=FILL_ROUNDS)(model)
    PassManager([Reinferred(CANONICALISATIONS)], steps=CANONICAL_ROUNDS)(model)
    return model
