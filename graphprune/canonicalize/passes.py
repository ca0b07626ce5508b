"""Canonicalisations as onnx-ir passes: each `Fold` wraps one rewrite function (model → number of rewrites),
`Swept` drops the nodes a sequence left dead, `Reinferred` re-infers shapes after a pass that changed the
graph (folded shape arithmetic lets inference reach further, which the next round may use)."""

from __future__ import annotations

from typing import Callable

import onnx_ir as ir
from onnx_ir.passes import InPlacePass, PassBase, PassResult
from onnx_ir.passes.common import RemoveUnusedNodesPass

from graphprune.canonicalize.shapes import infer_shapes
from graphprune.ir.passes import PassManager


class Fold(InPlacePass):
    """One canonicalisation: `fold(model)` rewrites in place and returns how many rewrites it made."""

    def __init__(self, fold: Callable[[ir.Model], int]) -> None:
        super().__init__()
        self.fold = fold

    def call(self, model: ir.Model) -> PassResult:
        return PassResult(model, modified=self.fold(model) > 0)

    def __repr__(self) -> str:
        return f"Fold({self.fold.__name__})"


class Swept(InPlacePass):
    """`passes` in order, then the nodes they left dead removed (once, when any of them changed the graph)."""

    def __init__(self, *passes: PassBase) -> None:
        super().__init__()
        self.passes = PassManager(passes)

    def call(self, model: ir.Model) -> PassResult:
        result = self.passes(model)
        if result.modified:
            RemoveUnusedNodesPass()(model)
        return result


class Settled(InPlacePass):
    """`first`; `then` only in a round where `first` changed nothing (rewrites that must see the rest done)."""

    def __init__(self, first: PassBase, then: PassBase) -> None:
        super().__init__()
        self.first, self.then = first, then

    def call(self, model: ir.Model) -> PassResult:
        result = self.first(model)
        return result if result.modified else self.then(model)


class Reinferred(InPlacePass):
    """`inner`, then shapes inferred again where it changed the graph."""

    def __init__(self, inner: PassBase) -> None:
        super().__init__()
        self.inner = inner

    def call(self, model: ir.Model) -> PassResult:
        result = self.inner(model)
        if result.modified:
            infer_shapes(model)
        return result
