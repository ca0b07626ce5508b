"""ONNX Runtime's tools run in a temporary working folder: the user's current folder never gets their scratch
files (its symbolic shape inference writes `sym_shape_infer_temp.onnx` there when inference is incomplete)."""

from __future__ import annotations

import os
from pathlib import Path

import onnx
import pytest

from graphprune.io.scratch import scratch_folder
from graphprune.models.demo import DEMO_MODEL


def test_scratch_folder_is_the_current_folder_inside_and_gone_after(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with scratch_folder() as folder:
        assert Path.cwd() == folder.resolve() and folder != tmp_path
        Path("scratch.onnx").write_bytes(b"x")
    assert Path.cwd() == tmp_path and not folder.exists() and os.listdir(tmp_path) == []


def test_scratch_folder_restores_the_folder_on_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RuntimeError), scratch_folder():
        raise RuntimeError("boom")
    assert Path.cwd() == tmp_path


def test_quantizer_and_transformer_optimizer_leave_the_current_folder_alone(tmp_path, monkeypatch):
    from graphprune.io.load import load_model
    from graphprune.models.quantize import FORMATS, quantize
    from graphprune.passes.rewrite.optimize import fuse

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for form in FORMATS:
        target = quantize(DEMO_MODEL, tmp_path / f"{form}.onnx", form)
        onnx.checker.check_model(str(target))
    fuse(load_model(DEMO_MODEL), "bert")
    assert os.listdir(work) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["work", *(f"{f}.onnx" for f in FORMATS)])
