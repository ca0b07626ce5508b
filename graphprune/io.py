"""Load ONNX models into onnx-ir and save them atomically, external data included."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import onnx
import onnx_ir as ir
from onnx_ir.passes.common import LiftConstantsToInitializersPass, ShapeInferencePass
from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

from graphprune import ops
from graphprune.canonicalize import canonicalize
from graphprune.errors import ModelLoadError

PROTOBUF_LIMIT = 2**31 - 1


def load_model(path: str | os.PathLike) -> ir.Model:
    """Read an ONNX file (external data kept lazy), lift Constant nodes to initializers, infer shapes."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such file")
    try:
        model = ir.load(path)
    except Exception as exc:  # protobuf raises several unrelated types on garbage input
        raise ModelLoadError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from exc
    if len(model.graph) == 0 and not model.graph.outputs:
        raise ModelLoadError(f"{path}: the file parsed but holds no ONNX graph")
    return prepare(model)


def prepare(model: ir.Model) -> ir.Model:
    """Normalise a model for analysis: weights as initializers, shapes inferred where possible."""
    LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
    infer_shapes(model)
    if fill_unknown_shapes(model):
        infer_shapes(model)
    canonicalize(model)
    return model


def fill_unknown_shapes(model: ir.Model) -> int:
    """Give outputs that inference left shapeless the shapes their op rules state; returns how many."""
    filled = 0
    for node in model.graph:
        rule = ops.lookup(node)
        shapes = rule.output_shapes(node) if rule is not None else None
        for value, shape in zip(node.outputs, shapes or [], strict=False):
            if value is not None and value.shape is None and shape is not None:
                value.shape = shape
                if value.type is None and node.inputs and node.inputs[0] is not None:
                    value.type = node.inputs[0].type
                filled += 1
    return filled


def infer_shapes(model: ir.Model) -> None:
    """Infer shapes in place: ONNX shape inference, then ONNX Runtime's symbolic inference, which follows
    Shape→Gather→Concat arithmetic (dynamic reshape targets) that ONNX's leaves unknown. Both are best
    effort: whatever stays unknown freezes the groups that need it."""
    try:
        ShapeInferencePass(check_type=False, strict_mode=False, data_prop=True)(model)
    except Exception:  # noqa: BLE001 - inference is best effort
        pass
    if uses_external_data(model) or _initializer_bytes(model) > PROTOBUF_LIMIT // 4:
        return
    # When it gives up, ORT's inference dumps the model into the working directory: give it a scratch one.
    with tempfile.TemporaryDirectory() as scratch, contextlib.chdir(scratch):
        try:
            inferred = SymbolicShapeInference.infer_shapes(ir.to_proto(model), auto_merge=True)
        except Exception:  # noqa: BLE001 - e.g. ops it does not know
            return
    _adopt_shapes(model, inferred)


def _initializer_bytes(model: ir.Model) -> int:
    return sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)


def _adopt_shapes(model: ir.Model, inferred: onnx.ModelProto) -> None:
    """Copy ORT's inferred shapes onto values unless their own shape has more static dims (ORT's symbolic
    names relate dims across tensors, where ONNX's inference invents fresh ones). A shape contradicting a
    static size ONNX inferred is not taken (ORT's inference mis-handles some ops, e.g. Einsum with '...')."""
    shapes = {}
    for info in (*inferred.graph.value_info, *inferred.graph.output):
        if info.type.HasField("tensor_type") and info.type.tensor_type.HasField("shape"):
            shapes[info.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                                 for d in info.type.tensor_type.shape.dim]
    for node in model.graph:
        for value in node.outputs:
            new = shapes.get(value.name)
            if new is None:
                continue
            old = None if value.shape is None else list(value.shape)
            if old is None or len(old) != len(new):
                value.shape = ir.Shape(new)
            elif _static_count(new) >= _static_count(old) and all(
                    not isinstance(o, int) or o == n for o, n in zip(old, new, strict=True)):
                value.shape = ir.Shape(new)


def _static_count(dims: list) -> int:
    return sum(isinstance(d, int) for d in dims)


def uses_external_data(model: ir.Model) -> bool:
    """True when any initializer lives outside the model file, or the model is too big for one protobuf."""
    total = 0
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if isinstance(tensor, ir.ExternalTensor):
            return True
        if tensor is not None:
            total += tensor.nbytes
    return total > PROTOBUF_LIMIT // 2


def save_model(model: ir.Model, path: str | os.PathLike, *, external_data: bool | None = None) -> None:
    """Write `model` to `path` atomically: files go to a temporary folder beside it, then are renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if external_data is None:
        external_data = uses_external_data(model)
    data_name = path.name + ".data" if external_data else None
    staging = Path(tempfile.mkdtemp(prefix=".graphprune-", dir=path.parent))
    try:
        ir.save(model, staging / path.name, external_data=data_name)
        if data_name:
            os.replace(staging / data_name, path.parent / data_name)
        os.replace(staging / path.name, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def as_file(model: ir.Model | str | os.PathLike) -> Iterator[Path]:
    """A path holding `model`: the file itself, or a temporary copy of an in-memory model (external data
    included) that is removed afterwards. Tools that resolve external data need a real file."""
    if not isinstance(model, ir.Model):
        yield Path(model)
        return
    with tempfile.TemporaryDirectory(prefix="graphprune-") as tmp:
        path = Path(tmp) / "model.onnx"
        save_model(model, path)
        yield path


def to_bytes(model: ir.Model) -> bytes:
    """Serialise a model that fits in one protobuf (tests, in-memory sessions)."""
    return ir.to_proto(model).SerializeToString()


def from_proto(proto: onnx.ModelProto) -> ir.Model:
    """Wrap an in-memory ModelProto, normalised like a loaded file."""
    return prepare(ir.from_proto(proto))
