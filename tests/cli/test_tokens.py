"""`analyze --tokens` and `prune --tokens` as a user runs them: eligible blocks listed, the kept counts and the MACs
in the sequence length reported, token and width pruning together, a saved plan replayed, bad blocks refused
before anything is written."""

from __future__ import annotations

import json

import numpy as np
import pytest

from graphprune.io import runtime
from tests.cli.test_cli import assert_one_line_error, run_cli

pytest.importorskip("torch")


def test_analyze_lists_the_token_axis_and_eligible_blocks(capsys, exported):
    code, out, _ = run_cli(capsys, "analyze", exported("bert", True), "--tokens")
    assert code == 0 and "2 attention blocks; token axis 1 of the residual stream, seq tokens" in out
    assert "1 of 1 blocks can reduce their tokens" in out
    code, out, _ = run_cli(capsys, "analyze", exported("vit", False), "--tokens", "--json")
    flow = json.loads(out)
    assert flow["tokens"] == 17 and flow["sites"][0]["status"] == "eligible"
    assert flow["sites"][0]["detail"] == "Gather takes token(s) [0]"


def test_prune_tokens_alone_then_with_widths_and_replayed(capsys, exported, tmp_path):
    bert = exported("bert", True)
    out_path, plan = tmp_path / "t.onnx", tmp_path / "plan.json"
    code, out, _ = run_cli(capsys, "prune", bert, "-o", out_path, "--tokens", "0.5", "--dim", "seq=32",
                           "--save-plan", plan)
    assert code == 0, out
    assert "before block 1: 16 of 32 tokens (seq=32)" in out and "dropped tokens restored in y" in out
    assert "params" in out and "pruned 0 of" in out  # --tokens alone removes no width
    macs = next(line for line in out.splitlines() if line.startswith("MACs "))
    assert float(macs.split()[-1].rstrip("x")) < 0.75
    code, out, _ = run_cli(capsys, "prune", bert, "-o", tmp_path / "both.onnx", "--tokens", "0.5",
                           "--head-ratio", "0.5", "--neuron-ratio", "0.5", "--dim", "seq=32")
    assert code == 0 and "onnxruntime run" in out and "pruned 4 of" in out
    code, out, _ = run_cli(capsys, "apply", bert, plan, "-o", tmp_path / "replayed.onnx")
    assert code == 0 and "before block 1" in out
    feeds = {"input_ids": np.arange(20, dtype=np.int64).reshape(2, 10) % 90 + 1,
             "attention_mask": np.ones((2, 10), np.int64)}
    first, again = (runtime.run(runtime.session(str(p)), feeds)[0] for p in (out_path, tmp_path / "replayed.onnx"))
    np.testing.assert_array_equal(first, again)


def test_bad_token_requests_are_refused_before_any_work(capsys, exported, tmp_path):
    bert = exported("bert", False)
    out_path = tmp_path / "o.onnx"
    code, _, err = run_cli(capsys, "prune", bert, "-o", out_path, "--tokens", "0.5", "--token-blocks", "5")
    assert_one_line_error(code, err)
    assert "--token-blocks 5: the model has blocks 0..1" in err and not out_path.exists()
    code, _, err = run_cli(capsys, "prune", bert, "-o", out_path, "--tokens", "0.5", "--token-score", "nope")
    assert code == 2 and "invalid choice" in err and not out_path.exists()
    code, _, err = run_cli(capsys, "prune", bert, "-o", tmp_path / "o.onnx", "--tokens", "0")
    assert code != 0 and "must be in (0, 1]" in err


def test_a_symbolic_token_count_without_a_size_is_flagged(capsys, exported, tmp_path):
    """Verified at sequence length 1 nothing is dropped, so the drift would say nothing: the run says so."""
    code, _, err = run_cli(capsys, "prune", exported("bert", True), "-o", tmp_path / "o.onnx", "--tokens", "0.5")
    assert code == 0 and "verification runs it at size 1, where no token is dropped; give --dim seq=N" in err


def test_prune_merges_tokens_and_refuses_merging_more_than_half(capsys, exported, tmp_path):
    vit = exported("vit", True)
    code, out, _ = run_cli(capsys, "prune", vit, "-o", tmp_path / "m.onnx", "--tokens", "0.6", "--token-method",
                           "merge")
    assert code == 0 and "merged (ToMe, proportional attention)" in out and "10 of 17 tokens" in out
    code, _, err = run_cli(capsys, "prune", vit, "-o", tmp_path / "n.onnx", "--tokens", "0.3", "--token-method",
                           "merge")
    assert_one_line_error(code, err)
    assert "one merge removes at most half the tokens" in err and not (tmp_path / "n.onnx").exists()


def test_measured_token_rates_reach_the_flops_target(capsys, exported, tmp_path):
    """--tokens auto: a rate per block, measured, until the MACs (at --dim) reach --target-flops; the written
    model's MACs agree. Without a target, or with width ratios beside it, it is refused before any work."""
    bert = exported("bert", True)
    code, out, err = run_cli(capsys, "prune", bert, "-o", tmp_path / "a.onnx", "--tokens", "auto", "--target-flops",
                             "0.8", "--dim", "seq=16", "--dim", "batch=2")
    assert code == 0, err
    reached = float(out.split("dense model's: reached ")[1].split(",")[0])
    macs = next(line for line in out.splitlines() if line.startswith("MACs "))
    assert reached <= 0.8 and abs(float(macs.split()[-1].rstrip("x")) - reached) < 0.01
    assert "rates chosen per block" in out
    for extra, message in [([], "give one"), (["--target-flops", "0.8", "--head-ratio", "0.5"], "alone")]:
        code, _, err = run_cli(capsys, "prune", bert, "-o", tmp_path / "b.onnx", "--tokens", "auto", *extra)
        assert_one_line_error(code, err)
        assert message in err and not (tmp_path / "b.onnx").exists()


def _macs_ratio(out: str) -> float:
    return float(next(line for line in out.splitlines() if line.startswith("MACs ")).split()[-1].rstrip("x"))


def test_one_budget_over_tokens_and_widths(capsys, exported, tmp_path):
    """--tokens auto with calibration data spends --target-flops on token rates and widths together: the target is
    reached, the written MACs are those the allocation counted, the plan replays to the same model. Requests the
    joint budget cannot serve are refused before anything is written."""
    vit = exported("vit", False)
    plan = tmp_path / "plan.json"
    code, out, err = run_cli(capsys, "prune", vit, "-o", tmp_path / "j.onnx", "--tokens", "auto", "--target-flops",
                             "0.6", "--data-free", "--save-plan", plan)
    assert code == 0, err
    reached = float(out.split("of the dense model's: reached ")[1].split(" ")[0])
    assert "one budget over tokens and widths" in out and reached <= 0.6
    assert abs(_macs_ratio(out) - reached) < 0.005
    code, replayed, err = run_cli(capsys, "apply", vit, plan, "-o", tmp_path / "r.onnx", "--data-free")
    assert code == 0, err
    kept = next(line for line in out.splitlines() if line.startswith("tokens kept"))
    assert _macs_ratio(replayed) == _macs_ratio(out) and kept in replayed
    for extra, message in [(["--tokens", "auto", "--data-free"], "give one"),
                           (["--tokens", "auto", "--target-params", "0.5", "--data-free"], "give one"),
                           (["--tokens", "auto", "--target-flops", "0.6", "--data-free", "--criterion", "l2"],
                            "the default method"),
                           (["--tokens", "0.7", "--depth", "--data-free"], "depth pruning")]:
        code, _, err = run_cli(capsys, "prune", vit, "-o", tmp_path / "b.onnx", *extra)
        assert_one_line_error(code, err)
        assert message in err and not (tmp_path / "b.onnx").exists()


def test_measuring_rows_shorter_than_the_counted_length_are_flagged(capsys, exported, tmp_path):
    """Token rates measured on 5-token rows while the MACs are counted at seq=16 get a warning naming both and the
    fix; --calib-length 16 pads the rows to the counted length and the warning goes."""
    bert = exported("bert", True)
    ids = tmp_path / "ids.txt"
    ids.write_text("\n".join(" ".join(str(t) for t in np.arange(1, 6) + row) for row in range(8)) + "\n")
    request = ["--tokens", "auto", "--target-flops", "0.8", "--ratio", "0", "--calib", ids, "--dim", "seq=16"]
    code, _, err = run_cli(capsys, "prune", bert, "-o", tmp_path / "a.onnx", *request)
    assert code == 0, err
    assert "measured on rows of 5 tokens but the MACs are counted at seq=16" in err and "--calib-length 16" in err
    code, _, err = run_cli(capsys, "prune", bert, "-o", tmp_path / "b.onnx", *request, "--calib-length", "16")
    assert code == 0 and "measured on rows of" not in err, err


def test_one_budget_spends_all_on_tokens_where_padding_is_free(capsys, exported, tmp_path):
    """Rows of 5 real tokens padded to 16: dropping padding moves no output a user reads (padding positions do
    not count in the measured error), so the one budget reaches the target on tokens alone and writes a model
    with every weight kept."""
    bert = exported("bert", True)
    ids = tmp_path / "ids.txt"
    ids.write_text("\n".join(" ".join(str(t) for t in np.arange(1, 6) + row) for row in range(8)) + "\n")
    code, out, err = run_cli(capsys, "prune", bert, "-o", tmp_path / "a.onnx", "--tokens", "auto", "--target-flops",
                             "0.8", "--calib", ids, "--calib-length", "16", "--dim", "seq=16")
    assert code == 0, err
    assert "one budget over tokens and widths" in out and "tokens kept: all" not in out
    params = next(line for line in out.splitlines() if line.startswith("params "))
    assert params.split()[-1] == "1.000x", params
