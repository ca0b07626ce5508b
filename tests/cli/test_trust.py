"""A tool people trust: the input and every file beside it stay byte-identical whatever is asked; wrong
requests are refused before any work with one line; what happened is reported (issue cases 1–14)."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from graphprune import progress
from graphprune.analysis.plan import fingerprint
from graphprune.cli.main import main
from graphprune.errors import PlanError
from graphprune.io import runtime
from graphprune.io.load import load_model
from graphprune.models.demo import DEMO_MODEL, DEMO_TEST_SET
from graphprune.passes import CalibrationSpec, prune_file
from tests.cli.test_cli import assert_one_line_error, run_cli
from tests.graphs import GraphBuilder


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(autouse=True)
def demo_folder_untouched():
    """Every case here that reads the packaged demo model leaves it, and every file beside it, as it was."""
    before = snapshot(DEMO_MODEL.parent)
    yield
    assert snapshot(DEMO_MODEL.parent) == before


def demo_with_external_data(tmp_path: Path, location: str) -> Path:
    """`input/model.onnx`: the demo model with its weights in `location` beside it, in a folder of its own."""
    folder = tmp_path / "input"
    folder.mkdir()
    onnx.save(onnx.load(DEMO_MODEL), folder / "model.onnx", save_as_external_data=True,
              all_tensors_to_one_file=True, location=location, size_threshold=0)
    return folder / "model.onnx"


@pytest.fixture
def external_input(tmp_path):
    """The demo model with its weights in `out.onnx.data` — the name graphprune once gave `-o out.onnx`'s data."""
    return demo_with_external_data(tmp_path, "out.onnx.data")


@pytest.mark.parametrize("output", ["out.onnx.data", "model.onnx"], ids=["data", "model"])
def test_output_never_overwrites_a_file_the_input_reads(capsys, external_input, output):
    before = snapshot(external_input.parent)
    code, _, err = run_cli(capsys, "prune", external_input, "-o", external_input.parent / output)
    assert_one_line_error(code, err)
    assert "would overwrite" in err and "the input is never modified" in err
    assert snapshot(external_input.parent) == before


def test_replacing_a_model_never_removes_data_the_input_reads(capsys, external_input):
    """`out.onnx` already exists and names `out.onnx.data`, the file the input reads its weights from: the new
    output replaces `out.onnx` (its data get a name of their own), and the data it superseded stay, since the
    input reads them."""
    folder = external_input.parent
    shutil.copy(external_input, folder / "out.onnx")
    before = snapshot(folder)
    code, out, _ = run_cli(capsys, "prune", external_input, "-o", folder / "out.onnx")
    assert code == 0 and "onnxruntime run" in out
    after = snapshot(folder)
    assert all(after[name] == before[name] for name in before if name != "out.onnx")
    assert runtime.run(runtime.session(folder / "out.onnx"), {"x": np.zeros((1, 1, 8, 8), np.float32)})


def test_a_hard_link_to_the_input_is_the_input(capsys, tmp_path):
    source = tmp_path / "m.onnx"
    source.write_bytes(DEMO_MODEL.read_bytes())
    os.link(source, tmp_path / "alias.onnx")
    before = snapshot(tmp_path)
    code, _, err = run_cli(capsys, "prune", source, "-o", tmp_path / "alias.onnx")
    assert_one_line_error(code, err)
    assert snapshot(tmp_path) == before


def test_external_data_output_beside_an_external_data_input_is_fine(capsys, external_input, tmp_path):
    before = snapshot(external_input.parent)
    code, out, _ = run_cli(capsys, "prune", external_input, "-o", tmp_path / "small.onnx")
    assert code == 0 and "onnxruntime run" in out
    assert snapshot(external_input.parent) == before


def two_models_of_one_architecture(folder: Path) -> tuple[Path, Path]:
    paths = []
    for seed in (0, 1):
        b = GraphBuilder(seed=seed)
        y = b.conv(b.op("Relu", [b.conv("x", 3, 8)]), 8, 6)
        paths.append(folder / f"arch{seed}.onnx")
        onnx.save(b.build({"x": ["batch", 3, 4, 4]}, {b.head(y, 6): ["batch", 5]}), paths[-1])
    return paths[0], paths[1]


def test_apply_refuses_a_plan_made_for_another_model_with_the_same_groups(capsys, tmp_path):
    made_for, other = two_models_of_one_architecture(tmp_path)
    plan = tmp_path / "plan.json"
    assert run_cli(capsys, "prune", made_for, "-o", tmp_path / "a.onnx", "--save-plan", plan)[0] == 0
    before = snapshot(tmp_path)
    code, _, err = run_cli(capsys, "apply", other, plan, "-o", tmp_path / "b.onnx")
    assert_one_line_error(code, err)
    assert f"was made for model {made_for.name}" in err and str(other) in err
    assert snapshot(tmp_path) == before
    copy = tmp_path / "copy.onnx"
    copy.write_bytes(made_for.read_bytes())
    assert run_cli(capsys, "apply", copy, plan, "-o", tmp_path / "c.onnx")[0] == 0


def test_a_plan_without_fingerprint_is_applied_with_a_warning(capsys, tmp_path):
    plan = tmp_path / "plan.json"
    assert run_cli(capsys, "prune", DEMO_MODEL, "-o", tmp_path / "a.onnx", "--save-plan", plan)[0] == 0
    data = json.loads(plan.read_text())
    del data["meta"]["model"]
    plan.write_text(json.dumps(data))
    code, _, err = run_cli(capsys, "apply", DEMO_MODEL, plan, "-o", tmp_path / "b.onnx")
    assert code == 0 and err.startswith("graphprune: WARNING: ") and "records no model fingerprint" in err


@pytest.mark.parametrize("clash", ["initializers", "node output"])
def test_duplicate_value_names_are_refused(capsys, tmp_path, clash):
    b = GraphBuilder()
    y = b.conv("x", 3, 4)
    model = b.build({"x": [1, 3, 4, 4]}, {b.head(y, 4): [1, 5]})
    weight = model.graph.initializer[0]
    if clash == "initializers":
        twin = onnx.TensorProto()
        twin.CopyFrom(weight)
        twin.float_data[:] = []
        twin.raw_data = (np.frombuffer(weight.raw_data, np.float32) * 2).tobytes()
        model.graph.initializer.append(twin)
    else:
        model.graph.node.insert(0, helper.make_node("Identity", ["x"], [weight.name]))
    source = tmp_path / "dup.onnx"
    onnx.save(model, source)
    before = snapshot(tmp_path)
    for args in (("analyze", source), ("prune", source, "-o", tmp_path / "out.onnx", "--ratio", "0")):
        code, _, err = run_cli(capsys, *args)
        assert_one_line_error(code, err)
        assert f"value names defined more than once ('{weight.name}')" in err
    assert snapshot(tmp_path) == before


def sequence_model() -> onnx.ModelProto:
    """conv → conv → SequenceConstruct → ConcatFromSequence → Optional → OptionalGetElement → head, the
    sequence and optional values annotated with their types as exporters write them."""
    b = GraphBuilder()
    z = b.conv(b.op("Relu", [b.conv("x", 3, 8)]), 8, 6)
    seq = b.op("SequenceConstruct", [z, z])
    optional = b.op("Optional", [b.op("ConcatFromSequence", [seq], axis=1)])
    model = b.build({"x": ["batch", 3, 4, 4]}, {b.head(b.op("OptionalGetElement", [optional]), 12): ["batch", 5]})
    element = helper.make_tensor_type_proto(onnx.TensorProto.FLOAT, None)
    model.graph.value_info.extend([
        helper.make_value_info(seq, helper.make_sequence_type_proto(element)),
        helper.make_value_info(optional, helper.make_optional_type_proto(element)),
    ])
    return model


@pytest.mark.parametrize("annotated", [True, False])
def test_sequence_and_optional_types_survive(tmp_path, annotated):
    model = sequence_model()
    if not annotated:
        del model.graph.value_info[:]
    onnx.save(model, tmp_path / "seq.onnx")
    result = prune_file(tmp_path / "seq.onnx", tmp_path / "out.onnx", ratio=0.5)
    assert result.groups_pruned == 1 and "onnx.checker full_check" in result.verification.passed
    written = {v.name: v.type.WhichOneof("value") for v in onnx.load(tmp_path / "out.onnx").graph.value_info}
    declared = {v.name: v.type.WhichOneof("value") for v in model.graph.value_info}
    assert {name: written.get(name) for name in declared} == declared


def test_the_output_declares_only_what_the_input_declared(tmp_path, exported):
    """Shapes graphprune inferred (ORT's symbolic expressions such as 'floor(h/2 - 1/2) + 1') must not become
    declarations: ONNX Runtime plans buffer reuse on declared dims. Declared ones are kept, resized."""
    source = exported("resnet", False)
    declared = onnx.load(source)
    onnx.save(declared, tmp_path / "in.onnx")
    result = prune_file(tmp_path / "in.onnx", tmp_path / "out.onnx", ratio=0.5)
    assert result.groups_pruned > 0
    written = onnx.load(tmp_path / "out.onnx")
    intermediate = {o for n in written.graph.node for o in n.output} - {o.name for o in written.graph.output}
    infos = {v.name for v in written.graph.value_info} & intermediate
    assert infos <= {v.name for v in declared.graph.value_info}


def test_a_model_that_fails_every_check_is_written_with_a_warning(capsys, tmp_path):
    model = onnx.load(DEMO_MODEL)
    model.ir_version = 99
    onnx.save(model, tmp_path / "future.onnx")
    code, out, err = run_cli(capsys, "prune", tmp_path / "future.onnx", "-o", tmp_path / "out.onnx")
    assert code == 0 and "verified: nothing" in out and out.count("not verified:") == 3
    assert "passed no check" in err


def test_drift_is_measured_on_given_feeds(capsys, tmp_path):
    with np.load(DEMO_TEST_SET) as data:
        np.savez(tmp_path / "feeds.npz", x=data["x"][:16])
    code, out, _ = run_cli(capsys, "prune", DEMO_MODEL, "-o", tmp_path / "a.onnx", "--feeds", tmp_path / "feeds.npz",
                           "--json")
    report = json.loads(out)
    assert code == 0 and report["verification"]["inputs"] == "the given inputs"
    assert 0 < report["verification"]["drift"] < 10
    code, out, _ = run_cli(capsys, "prune", DEMO_MODEL, "-o", tmp_path / "b.onnx", "--ratio", "0", "--json")
    assert json.loads(out)["verification"]["drift"] <= 1e-6


def test_target_params_zero_is_refused_and_small_targets_honoured(capsys, tmp_path):
    code, _, err = run_cli(capsys, "prune", DEMO_MODEL, "-o", tmp_path / "a.onnx", "--target-params", "0")
    assert code == 2 and "--target-params: must be in (0, 1]" in err and not (tmp_path / "a.onnx").exists()
    code, out, _ = run_cli(capsys, "prune", DEMO_MODEL, "-o", tmp_path / "b.onnx", "--target-params", "0.4", "--json")
    report = json.loads(out)
    assert code == 0 and abs(report["after"]["params"] / report["before"]["params"] - 0.4) < 0.05


@pytest.mark.parametrize(("args", "message"), [
    (("prune", DEMO_MODEL, "-o", "{tmp}/o.onnx", "--batch-size", "0"), "--batch-size: must be a positive integer"),
    (("prune", DEMO_MODEL, "-o", "{tmp}/o.onnx", "--samples", "0"), "--samples: must be a positive integer"),
    (("prune", DEMO_MODEL, "-o", "{tmp}/o.onnx", "--round-to", "0"), "--round-to: must be a positive integer"),
    (("prune", DEMO_MODEL, "-o", "{tmp}/o.onnx", "--round-to", "-8"), "--round-to: must be a positive integer"),
    (("prune", DEMO_MODEL, "-o", "{tmp}/o.onnx", "--max-layer-ratio", "1.5"), "--max-layer-ratio: must be in (0, 1]"),
    (("prune", DEMO_MODEL, "-o", "{tmp}/o.onnx", "--ratio", "x"), "'x' is not a number"),
    (("prune", DEMO_MODEL, "-o", "{tmp}/o.onnx", "--image-std", "0"), "--image-std: must not be 0"),
    (("prune", DEMO_MODEL, "-o", "{tmp}/o.onnx", "--dim", "seq"), "expected NAME=VALUE"),
    (("bench", DEMO_MODEL, "--runs", "0"), "--runs: must be a positive integer"),
    (("bench", DEMO_MODEL, "--threads", "-1"), "--threads: must be a positive integer"),
])
def test_bad_options_are_usage_errors_before_any_work(capsys, tmp_path, args, message):
    code, out, err = run_cli(capsys, *(str(a).format(tmp=tmp_path) for a in args))
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and not out
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("where", "message"), [
    ("folder", "is a folder"),
    ("under-a-file", "is not a folder"),
    ("plan-is-output", "would be the same file"),
    ("plan-under-a-file", "is not a folder"),
    ("missing-calib", "no such calibration file"),
    ("missing-tokenizer", "no such file"),
    ("missing-feeds", "no such file"),
    ("no-output", "needs -o/--output"),
    ("output-is-calibration", "which this run reads"),
    ("plan-is-feeds", "which this run reads"),
])
def test_bad_locations_are_refused_before_any_work(capsys, tmp_path, where, message):
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("x")
    with np.load(DEMO_TEST_SET) as data:
        np.savez(tmp_path / "folder" / "x.npz", x=data["x"][:16])
    data = tmp_path / "folder" / "x.npz"
    out = tmp_path / "o.onnx"
    extra = {
        "folder": ["-o", tmp_path / "folder"],
        "under-a-file": ["-o", tmp_path / "file" / "o.onnx"],
        "plan-is-output": ["-o", out, "--save-plan", out],
        "plan-under-a-file": ["-o", out, "--save-plan", tmp_path / "file" / "p.json"],
        "missing-calib": ["-o", out, "--criterion", "flap", "--calib", tmp_path / "nope.npz"],
        "missing-tokenizer": ["-o", out, "--calib", tmp_path / "file", "--tokenizer", tmp_path / "nope.json"],
        "missing-feeds": ["-o", out, "--feeds", tmp_path / "nope.npz"],
        "no-output": [],
        "output-is-calibration": ["-o", data, "--criterion", "flap", "--calib", data],
        "plan-is-feeds": ["-o", out, "--feeds", data, "--save-plan", data],
    }[where]
    before = snapshot(tmp_path), snapshot(tmp_path / "folder")
    code, _, err = run_cli(capsys, "prune", DEMO_MODEL, *extra)
    assert_one_line_error(code, err)
    assert message in err and ".graphprune-" not in err
    assert (snapshot(tmp_path), snapshot(tmp_path / "folder")) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "folder"]


def test_missing_folders_are_created_for_model_and_plan(capsys, tmp_path):
    code, _, _ = run_cli(capsys, "prune", DEMO_MODEL, "-o", tmp_path / "a" / "o.onnx",
                         "--save-plan", tmp_path / "b" / "plan.json")
    assert code == 0 and (tmp_path / "a" / "o.onnx").is_file() and (tmp_path / "b" / "plan.json").is_file()


@pytest.mark.parametrize("kind", ["missing", "garbage", "wrong-shape", "wrong-dtype", "text-for-ids"])
def test_calibration_errors_are_one_clean_line(capsys, tmp_path, monkeypatch, kind):
    calib = tmp_path / ("calib.txt" if kind == "text-for-ids" else "calib.npz")
    if kind == "garbage":
        calib.write_bytes(b"PK\x03\x04 this is no zip archive" * 20)
    elif kind == "wrong-shape":
        np.savez(calib, x=np.zeros((4, 3), np.float32))
    elif kind == "wrong-dtype":
        np.savez(calib, x=np.array([["a"] * 8] * 4))
    elif kind == "text-for-ids":
        calib.write_text("a sentence, not token ids\n")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # progress on: no bar residue may precede the error
    code, _, err = run_cli(capsys, "prune", DEMO_MODEL, "-o", tmp_path / "o.onnx", "--criterion", "flap",
                           "--calib", calib)
    last = err.rstrip("\n").split("\n")[-1].split("\r")[-1]
    assert code == 1 and last.startswith("graphprune: error:"), err
    for raw in ("BadZipFile", "ONNXRuntimeError", "Traceback", "INVALID_ARGUMENT"):
        assert raw not in err
    assert not (tmp_path / "o.onnx").exists()


def test_a_closed_pipe_ends_quietly(tmp_path):
    reader = subprocess.Popen([sys.executable, "-m", "graphprune.cli.main", "analyze", str(DEMO_MODEL), "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    reader.stdout.close()
    _, err = reader.communicate(timeout=120)
    assert reader.returncode == 141 and err == b""


def test_progress_names_every_step_and_counts_real_samples(tmp_path):
    with np.load(DEMO_TEST_SET) as data:
        np.savez(tmp_path / "calib.npz", x=data["x"][:40])
    stream = io.StringIO()
    with progress.reporting(True, stream):
        prune_file(DEMO_MODEL, tmp_path / "o.onnx", criterion="flap", ratio=0.3,
                   calibration=CalibrationSpec(str(tmp_path / "calib.npz"), samples=128, batch_size=16))
    text = stream.getvalue()
    for step in ("loading digits_cnn.onnx (", "inferring shapes (", "analyzing (", "rewriting (", "verifying (",
                 "writing "):
        assert step in text, text
    assert "0/40" in text and "/128" not in text


def test_version_verbose_and_debug(capsys, tmp_path, monkeypatch):
    code, out, _ = run_cli(capsys, "--version")
    assert code == 0 and out.startswith("graphprune 0.")
    code, _, err = run_cli(capsys, "prune", DEMO_MODEL, "-o", tmp_path / "v.onnx", "-v")
    assert code == 0 and "graphprune: INFO: analyzing:" in err and "graphprune: INFO: plan: " in err
    code, _, err = run_cli(capsys, "-vv", "analyze", DEMO_MODEL)
    assert code == 0 and "graphprune: DEBUG: group 0 channel /stem/stem.0" in err
    # a CPU whose conv channel block is unknown: nothing to warn of (the warning has its own test)
    monkeypatch.setattr("graphprune.io.runtime.conv_channel_block", lambda: None)
    code, _, err = run_cli(capsys, "prune", DEMO_MODEL, "-o", tmp_path / "q.onnx", "--ratio", "0.2")
    assert code == 0 and err == ""
    monkeypatch.undo()
    with pytest.raises(PlanError):
        main(["apply", str(DEMO_MODEL), str(write_bad_plan(tmp_path)), "-o", str(tmp_path / "o.onnx"), "--debug"])
    code, _, err = run_cli(capsys, "apply", DEMO_MODEL, write_bad_plan(tmp_path), "-o", tmp_path / "o.onnx")
    assert_one_line_error(code, err)


def write_bad_plan(folder: Path) -> Path:
    """A plan for the demo model (its fingerprint) naming a group the model does not have."""
    path = folder / "bad_plan.json"
    made_for = {"file": DEMO_MODEL.name, "fingerprint": fingerprint(load_model(DEMO_MODEL))}
    path.write_text(json.dumps({"meta": {"model": made_for},
                                "groups": [{"group": 0, "label": "nope[0]", "size": 3, "removed": [1]}]}))
    return path


def test_analyze_names_layers(capsys, exported):
    code, out, _ = run_cli(capsys, "analyze", DEMO_MODEL)
    assert code == 0 and "/stem/stem.0" in out
    code, out, _ = run_cli(capsys, "analyze", exported("resnet", True), "--json")
    layers = {g["layer"] for g in json.loads(out)}
    assert "stem.0" in layers or "stem.1" in layers, layers


def test_prune_reports_widths_frozen_groups_and_drift(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "prune", DEMO_MODEL, "-o", tmp_path / "o.onnx", "--ratio", "0.5")
    assert code == 0 and "/stem/stem.0" in out and "32 -> 16" in out
    assert "frozen: 1 group(s), by reason:\n  1 × y[axis 1]: graph output\n" in out
    assert "output drift vs the original:" in out


def test_dry_run_writes_nothing_but_the_plan(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "prune", DEMO_MODEL, "--dry-run", "--ratio", "0.5", "--save-plan",
                           tmp_path / "plan.json", "--json")
    report = json.loads(out)
    assert code == 0 and report["dry_run"] and report["output"] is None and report["verification"] is None
    assert report["after"]["params"] < report["before"]["params"]
    assert [p.name for p in tmp_path.iterdir()] == ["plan.json"]
    code, out, _ = run_cli(capsys, "apply", DEMO_MODEL, tmp_path / "plan.json", "-o", tmp_path / "o.onnx", "--json")
    assert code == 0 and json.loads(out)["after"]["params"] == report["after"]["params"]


def test_a_ratio_that_rounds_to_nothing_is_reported(capsys, tmp_path, exported):
    """LLaMA-GQA with 2 KV groups: --head-ratio 0.25 removes floor(0.5) = 0 of them — said, per kind."""
    code, out, err = run_cli(capsys, "prune", exported("llama", True), "-o", tmp_path / "o.onnx", "--ratio", "0",
                             "--head-ratio", "0.25", "--neuron-ratio", "0.25")
    assert code == 0
    assert "ratio 0.25 removes nothing from 2 head group(s) of 2 unit(s)" in err and "at least 0.5" in err
    assert re.search(r"\nhead +0 of 2 +4 -> 4\n", out) and re.search(r"\nneuron +2 of 2 +192 -> 144\n", out)


def test_cuda_falls_back_to_the_cpu_with_one_warning(capsys, tmp_path):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("CUDA is available here: nothing falls back")
    code, out, err = run_cli(capsys, "prune", DEMO_MODEL, "-o", tmp_path / "o.onnx", "--provider", "cuda")
    assert code == 0 and "onnxruntime run" in out
    assert err.startswith("graphprune: WARNING: CUDAExecutionProvider is not available")
    assert err.count("CUDAExecutionProvider is not available") == 1  # one warning, not one per session
    code, _, err = run_cli(capsys, "prune", DEMO_MODEL, "-o", tmp_path / "p.onnx", "--provider", "tpu")
    assert code == 2 and "invalid choice: 'tpu'" in err


def test_cuda_calibrates_and_verifies_to_the_cpu_plan(capsys, tmp_path):
    """Where CUDA is available (the gpu extra on a GPU machine): calibration and verification run there, the
    report says so, and the plan is the one the CPU makes from the same synthetic inputs; bench times there
    with inputs and outputs held on the GPU."""
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("no CUDA here")
    plans = {}
    for provider in ("cpu", "cuda"):
        plan = tmp_path / f"{provider}.json"
        code, out, _ = run_cli(capsys, "prune", DEMO_MODEL, "-o", tmp_path / f"{provider}.onnx", "--provider",
                               provider, "--criterion", "obs", "--data-free", "--ratio", "0.3", "--save-plan", plan)
        assert code == 0 and ("onnxruntime run on CUDAExecutionProvider" in out) == (provider == "cuda")
        plans[provider] = [group["removed"] for group in json.loads(plan.read_text())["groups"]]
    assert plans["cuda"] == plans["cpu"]
    code, out, _ = run_cli(capsys, "bench", DEMO_MODEL, tmp_path / "cuda.onnx", "--provider", "cuda", "--runs", "10")
    assert code == 0 and "held on cuda (IO binding)" in out and "latency ratio" in out


def test_pruning_for_cuda_warns_of_widths_gpu_products_run_slowly_at(capsys, tmp_path):
    """--provider cuda: kept widths off a multiple of 16 draw one warning naming --round-to 16; rounded, none."""
    for round_to, warned in (("1", True), ("16", False)):
        code, _, err = run_cli(capsys, "prune", DEMO_MODEL, "-o", tmp_path / f"{round_to}.onnx", "--provider", "cuda",
                               "--ratio", "0.3", "--round-to", round_to)
        assert code == 0 and ("are not multiples of 16" in err and "--round-to 16" in err) == warned


def test_pruning_conv_widths_off_the_cpus_channel_block_warns(capsys, tmp_path):
    """On the CPU, conv widths off ONNX Runtime's NCHWc block (16 with AVX-512, 8 with AVX2) run as the next
    multiple: kept conv widths off it draw one warning naming --round-to BLOCK; on it, none. Where the block is
    unknown, nothing is said."""
    from graphprune.io.runtime import conv_channel_block

    block = conv_channel_block()
    for round_to in ("1", "16"):
        code, _, err = run_cli(capsys, "prune", DEMO_MODEL, "-o", tmp_path / f"{round_to}.onnx", "--ratio", "0.3",
                               "--round-to", round_to, "--criterion", "l2")
        warned = "ONNX Runtime's CPU convolutions here compute channels in blocks of" in err
        assert code == 0 and warned == bool(block and int(round_to) % block), (block, round_to, err)
        assert not warned or f"--round-to {block}" in err


def test_nothing_to_prune_is_said_before_any_work(capsys, tmp_path):
    """An expert ratio on a model without MoE layers, any ratio on a model whose every group is frozen, and
    ratios too small for every group: one clear error, no output file."""
    target = tmp_path / "out.onnx"
    code, _, err = run_cli(capsys, "prune", DEMO_MODEL, "-o", target, "--ratio", "0", "--expert-ratio", "0.5")
    assert code != 0 and "no MoE layer was found" in err and not target.exists()
    b = GraphBuilder()
    frozen = tmp_path / "frozen.onnx"
    onnx.save(b.build({"x": [1, 4, 8, 8]}, [b.conv("x", 4, 8)]), frozen)
    code, _, err = run_cli(capsys, "prune", frozen, "-o", target, "--ratio", "0.5")
    assert code != 0 and "nothing can be pruned: all 1 groups are frozen: 1 × graph output" in err
    code, _, err = run_cli(capsys, "prune", DEMO_MODEL, "-o", target, "--ratio", "0.01")
    assert code != 0 and "remove no unit" in err and not target.exists()
