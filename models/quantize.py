"""Quantize a float model with ONNX Runtime's own quantizer, in every format edge pipelines ship: static QDQ
and QOperator (per-channel or per-tensor int8 weights), dynamic int8, and int4 MatMulNBits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static
from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
from onnxruntime.quantization.shape_inference import quant_pre_process

from graphprune.io import runtime
from graphprune.io.scratch import scratch_folder

FORMATS = ("qdq", "qdq-per-tensor", "qoperator", "qoperator-per-tensor", "dynamic", "int4")


class _Batches(CalibrationDataReader):
    def __init__(self, batches: list[dict[str, np.ndarray]]) -> None:
        self.batches = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)


def quantize(source: str | Path, target: str | Path, form: str,
             batches: list[dict[str, np.ndarray]] | None = None, dims: dict[str, int] | None = None) -> Path:
    """Write `source` quantized in `form` (one of FORMATS) to `target`. Static formats calibrate on `batches`
    (default: four seeded random batches, symbolic axes sized by `dims`)."""
    if form not in FORMATS:
        raise ValueError(f"unknown quantization format {form!r}; choose from {', '.join(FORMATS)}")
    source, target = Path(source).resolve(), Path(target).resolve()
    with scratch_folder() as scratch:  # ORT's tools write scratch files into the current folder
        _quantize(source, scratch / "prepared.onnx", target, form, batches, dims)
    return target


def _quantize(source: Path, prepared: Path, target: Path, form: str, batches: list[dict[str, np.ndarray]] | None,
              dims: dict[str, int] | None) -> None:
    quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
    if form == "int4":
        quantizer = MatMulNBitsQuantizer(onnx.load(prepared), block_size=32, is_symmetric=False)
        quantizer.process()
        quantizer.model.save_model_to_file(str(target))
    elif form == "dynamic":
        quantize_dynamic(prepared, target, weight_type=QuantType.QInt8)
    else:
        if batches is None:
            sess = runtime.session(str(prepared))
            batches = [runtime.random_feeds(sess, batch=2, seed=seed, dims=dims) for seed in range(4)]
        quantize_static(prepared, target, _Batches(batches),
                        quant_format=QuantFormat.QDQ if form.startswith("qdq") else QuantFormat.QOperator,
                        per_channel=not form.endswith("per-tensor"), weight_type=QuantType.QInt8,
                        activation_type=QuantType.QUInt8)
