"""The README's Python example runs as written (on a copy of the demo model) and verifies before saving."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import onnx

from graphprune.models.demo import DEMO_MODEL

README = Path(__file__).resolve().parent.parent / "README.md"


def test_python_example_runs_and_writes_a_verified_model(tmp_path, monkeypatch, capsys):
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", README.read_text(), re.S) if "verify_like" in b]
    (tmp_path / "model.onnx").write_bytes(DEMO_MODEL.read_bytes())
    (tmp_path / "example.py").write_text(block)
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(tmp_path / "example.py"))
    assert "verified: ['onnx.checker full_check', 'onnx.checker', 'onnxruntime run']" in capsys.readouterr().out
    onnx.checker.check_model(str(tmp_path / "small.onnx"), full_check=True)
    assert (tmp_path / "model.onnx").read_bytes() == DEMO_MODEL.read_bytes()


def test_quantization_example_keeps_the_format(tmp_path, monkeypatch):
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", README.read_text(), re.S) if "quantize(" in b]
    (tmp_path / "model.onnx").write_bytes(DEMO_MODEL.read_bytes())
    (tmp_path / "example.py").write_text(block)
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(tmp_path / "example.py"))
    for name in ("small_int8.onnx", "small_int8_direct.onnx"):
        model = onnx.load(str(tmp_path / name))
        assert any(n.op_type == "DequantizeLinear" for n in model.graph.node), name
        onnx.checker.check_model(model, full_check=True)
