"""The pass manager: passes run in order, steps repeat while something changes, and a pass's own error reaches
the caller unwrapped (a GraphpruneError stays the one line the user reads)."""

from __future__ import annotations

import onnx_ir as ir
import pytest
from onnx_ir.passes import InPlacePass, PassResult

from graphprune.errors import GraphpruneError
from graphprune.ir.passes import PassManager


class Countdown(InPlacePass):
    """Changes the model (a counter in its meta) until the counter reaches zero."""

    def __init__(self, log: list[str], name: str) -> None:
        super().__init__()
        self.log, self.name = log, name

    def call(self, model: ir.Model) -> PassResult:
        self.log.append(self.name)
        left = model.meta.get("left", 0)
        if left:
            model.meta["left"] = left - 1
        return PassResult(model, modified=bool(left))


def model(left: int) -> ir.Model:
    m = ir.Model(ir.Graph([], [], nodes=[]), ir_version=10)
    m.meta["left"] = left
    return m


def test_steps_repeat_until_nothing_changes():
    log: list[str] = []
    result = PassManager([Countdown(log, "a"), Countdown(log, "b")], steps=5)(model(3))
    # step 1: a (3→2), b (2→1); step 2: a (1→0), b (no change); step 3: nothing changes, stop
    assert log == ["a", "b", "a", "b", "a", "b"] and result.modified


def test_steps_are_bounded_and_unchanged_is_reported():
    log: list[str] = []
    assert PassManager([Countdown(log, "a")], steps=2)(model(10)).model.meta["left"] == 8
    assert not PassManager([Countdown(log, "a")], steps=3)(model(0)).modified


def test_a_pass_error_is_not_wrapped():
    class Refuses(InPlacePass):
        def call(self, model: ir.Model) -> PassResult:
            raise GraphpruneError("no")

    with pytest.raises(GraphpruneError, match="^no$"):
        PassManager([Refuses()])(model(0))
