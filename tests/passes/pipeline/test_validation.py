"""The default method chosen on held-out calibration data: the errors it compares are the candidates' real
errors on rows none of them was fitted to, it keeps the least, and its plan replays."""

from __future__ import annotations

import logging

import numpy as np
import onnxruntime as ort
import pytest

from graphprune.errors import GraphpruneError
from graphprune.models.demo import DEMO_MODEL
from graphprune.passes import Output, PruneRequest, apply_file, prune_file
from graphprune.passes.allocation.quality import split, splittable
from graphprune.passes.allocation.spec import Allocation
from graphprune.passes.calibration.spec import CalibrationSpec

CANDIDATES = {"uniform, one-shot", "measured, one-shot", "measured, refit"}  # the demo CNN has no removable block


def default(calib, validate: bool = True) -> PruneRequest:
    """The default method with calibration data, as the command line builds it, at ratio 0.5."""
    return PruneRequest("obs", 0.5, calibration=CalibrationSpec(calib, batch_size=32),
                        allocation=Allocation("measured", 0.5), sequential=True, depth=True, validate=validate)


def held_out_error(model, rows: np.ndarray) -> float:
    """Σ‖y − ŷ‖² / Σ‖y‖² of `model` against the demo CNN on `rows`, in ONNX Runtime."""
    def run(path):
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": rows})[0]
    dense = run(DEMO_MODEL)
    return float(((dense - run(model)) ** 2).sum() / (dense ** 2).sum())


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """128 calibration rows (4 batches of 32: the last one held out) and a file of the first 96 only."""
    folder = tmp_path_factory.mktemp("validation")
    with np.load(DEMO_MODEL.parent / "digits_test.npz") as data:
        rows = data["x"][:128]
    np.savez(folder / "all.npz", x=rows)
    np.savez(folder / "fit.npz", x=rows[:96])
    return folder, rows


def test_one_batch_is_cut_into_row_batches_and_a_quarter_held_out():
    feeds = {"x": np.arange(16.0).reshape(8, 2), "attention_mask": np.ones((8, 5), np.int64)}
    fit, held = split([feeds])
    assert [len(b["x"]) for b in fit] == [2, 2, 2] and [len(b["x"]) for b in held] == [2]
    assert np.array_equal(np.concatenate([b["x"] for b in fit + held]), feeds["x"])
    assert all(len(b["attention_mask"]) == len(b["x"]) for b in fit + held)
    assert splittable([feeds]) and not splittable([{"x": feeds["x"][:3]}])
    assert not splittable([{"x": feeds["x"], "mask": feeds["attention_mask"][:4]}])  # no shared batch axis
    with pytest.raises(GraphpruneError, match="at least 2 batches or a batch of 4 rows"):
        split([{"x": feeds["x"][:3]}])


def test_the_errors_compared_are_the_candidates_errors_on_rows_they_were_not_fitted_to(digits, tmp_path):
    """Each candidate's recorded error is what the same method, run on the first 96 rows alone, scores on the
    last 32 once written; the kept form is the least of them."""
    folder, rows = digits
    result = prune_file(DEMO_MODEL, tmp_path / "chosen.onnx", default(folder / "all.npz"))
    chosen = result.plan.meta["validation"]
    errors = chosen["held_out_errors"]
    assert set(errors) == CANDIDATES and chosen["held_out_batches"] == 1
    assert chosen["chosen"] == min(errors, key=errors.get)
    fit = CalibrationSpec(folder / "fit.npz", batch_size=32)
    alone = {"uniform, one-shot": PruneRequest("obs", 0.5, calibration=fit),
             "measured, one-shot": PruneRequest("obs", 0.5, calibration=fit, allocation=Allocation("measured", 0.5)),
             "measured, refit": PruneRequest("obs", 0.5, calibration=fit, allocation=Allocation("measured", 0.5),
                                             sequential=True)}
    for name, request in alone.items():
        prune_file(DEMO_MODEL, tmp_path / "alone.onnx", request)
        assert held_out_error(tmp_path / "alone.onnx", rows[96:]) == pytest.approx(errors[name], rel=2e-3), name
    assert len(set(np.round(list(errors.values()), 6))) == len(errors)  # the candidates really differ


def test_the_chosen_plan_replays_to_the_same_model(digits, tmp_path):
    """The demo CNN's choice is the refit (measured: 0.047 against 0.097 one-shot), fitted on all the batches
    again when written, as `apply` refits it."""
    folder, rows = digits
    output = tmp_path / "chosen.onnx"

    result = prune_file(DEMO_MODEL, Output(output, tmp_path / "plan.json"), default(folder / "all.npz"))
    chosen = result.plan.meta["validation"]
    refit = chosen["chosen"].endswith("refit")
    assert result.plan.meta["compensation"] == ("refit" if refit else "obs-weights")
    apply_file(DEMO_MODEL, tmp_path / "plan.json", tmp_path / "replayed.onnx",
               CalibrationSpec(folder / "all.npz", batch_size=32))
    assert held_out_error(tmp_path / "replayed.onnx", rows) == pytest.approx(held_out_error(output, rows), rel=1e-4)


def test_too_little_data_to_hold_out_runs_the_full_default(digits, tmp_path, caplog):
    folder, rows = digits
    np.savez(tmp_path / "two.npz", x=rows[:2])
    with caplog.at_level(logging.WARNING, logger="graphprune"):
        result = prune_file(DEMO_MODEL, tmp_path / "o.onnx", default(tmp_path / "two.npz"))
    assert "validation" not in result.plan.meta and result.plan.meta["compensation"] == "refit"
    assert "too little calibration data to hold any out" in caplog.text


def test_validation_is_refused_where_there_is_nothing_to_choose_between(digits, tmp_path):
    folder, _ = digits
    with pytest.raises(GraphpruneError, match="compares the default method's forms"):
        prune_file(DEMO_MODEL, tmp_path / "o.onnx", PruneRequest("l2", 0.5, validate=True))
    assert not (tmp_path / "o.onnx").exists()
