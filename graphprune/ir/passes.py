"""The pass manager every stage's passes run under: onnx-ir passes (`PassBase.call(model) -> PassResult`), run in
order, `steps` times or until a step changes nothing. Unlike onnx-ir's own manager it does not wrap a pass's
errors: a `GraphpruneError` a pass raises reaches the user as the one line it is."""

from __future__ import annotations

from typing import Sequence

import onnx_ir as ir
from onnx_ir.passes import InPlacePass, PassBase, PassResult


class PassManager(InPlacePass):
    """Run `passes` in order on the model, repeated up to `steps` times while a step changes something."""

    def __init__(self, passes: Sequence[PassBase], steps: int = 1) -> None:
        super().__init__()
        self.passes, self.steps = list(passes), steps

    def call(self, model: ir.Model) -> PassResult:
        modified = False
        for _ in range(self.steps):
            changed = False
            for step in self.passes:
                changed = step(model).modified or changed
            modified = modified or changed
            if not changed:
                break
        return PassResult(model, modified)

    def __repr__(self) -> str:
        return f"PassManager({', '.join(map(repr, self.passes))}, steps={self.steps})"
