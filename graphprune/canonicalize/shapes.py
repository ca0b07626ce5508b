"""Shape inference for analysis: ONNX's, then ONNX Runtime's symbolic inference, then the shapes op rules
state for contrib ops neither knows. Best effort: what stays unknown freezes the groups that need it."""

from __future__ import annotations

import functools
from pathlib import Path

import onnx
import onnx_ir as ir
from onnx_ir.passes.common._c_api_utils import call_onnx_api

from graphprune import ops
from graphprune.ir.model import PROTOBUF_LIMIT, initializer_bytes, uses_external_data

_SAME_SHAPE_CONTRIB = ("QLinearSoftmax", "QLinearSigmoid", "QLinearLeakyRelu")


_FLOAT_MATMUL_CONTRIB = ("DynamicQuantizeMatMul", "MatMulIntegerToFloat")  # A @ B → float


def unknown_negative_sizes(model: ir.Model) -> int:
    """Declared negative sizes (tf2onnx writes -1 for a size it does not know) become unknown ones, which
    inference then names and relates like any other; returns how many values had one."""
    count = 0
    for value in [*model.graph.inputs, *model.graph.outputs, *(v for node in model.graph for v in node.outputs)]:
        if value.shape is not None and any(isinstance(d, int) and d < 0 for d in value.shape):
            value.shape = ir.Shape([ir.SymbolicDim(None) if isinstance(d, int) and d < 0 else d
                                    for d in value.shape])
            count += 1
    return count


def infer_reconciled(model: ir.Model) -> None:
    """Infer shapes without the declared ones of intermediate values (they can be stale: jax2onnx leaves NHWC
    ones on NCHW tensors), then keep each declaration inference does not contradict (its names relate dims)."""
    declared = {v: v.shape for node in model.graph for v in node.outputs
                if v.shape is not None and not v.is_graph_output()}
    for value in declared:
        value.shape = None
    infer_shapes(model)
    unreached = [value for value in declared if value.shape is None]
    for value, shape in declared.items():
        value.shape = _reconciled(shape, value.shape)
    if unreached:  # inference stopped before them (a custom op): let it go on from the declarations
        infer_shapes(model)


def fill_unknown_shapes(model: ir.Model) -> int:
    """Give outputs that inference left shapeless the shapes their op rules state; returns how many."""
    filled = 0
    for node in model.graph:
        rule = ops.lookup(node)
        shapes = rule.output_shapes(node) if rule is not None else None
        for value, shape in zip(node.outputs, shapes or [], strict=False):
            if value is not None and value.shape is None and shape is not None:
                value.shape = shape
                dtype = _first_dtype(node, rule.quantization_inputs(node))
                if value.dtype is None and dtype is not None:
                    value.dtype = dtype
                filled += 1
    return filled


def _reconciled(declared: ir.Shape, inferred: ir.Shape | None) -> ir.Shape:
    """The declared shape unless inference contradicts it (another rank, another static size), with the
    static sizes either knows; a contradicted declaration is dropped."""
    if inferred is None:
        return declared
    if len(inferred) != len(declared):
        return inferred
    dims = []
    for mine, theirs in zip(declared.dims, inferred.dims, strict=True):
        if isinstance(mine, int) and isinstance(theirs, int) and mine != theirs:
            return inferred
        dims.append(mine if isinstance(mine, int) or not isinstance(theirs, int) else theirs)
    return ir.Shape(dims)


def _first_dtype(node: ir.Node, skip: tuple[int, ...]) -> ir.DataType | None:
    """The element type of the node's first typed data input (contrib ops keep their data input's type);
    `skip`: scales and zero points."""
    for index, value in enumerate(node.inputs):
        if index not in skip and value is not None and (value.dtype or value.const_value is not None):
            return value.dtype or value.const_value.dtype
    return None


def infer_shapes(model: ir.Model) -> None:
    """Infer shapes in place: ONNX shape inference, then ONNX Runtime's symbolic inference, which follows
    Shape→Gather→Concat arithmetic (dynamic reshape targets) that ONNX's leaves unknown. Both are best
    effort: whatever stays unknown freezes the groups that need it."""
    _onnx_shape_inference(model)
    if uses_external_data(model) or initializer_bytes(model) > PROTOBUF_LIMIT // 4:
        return
    inference = _ort_symbolic_inference()(2**31 - 1, True, False, 0)  # int_max, auto_merge, guess rank, verbose
    for op_type in _SAME_SHAPE_CONTRIB:  # contrib ops its dispatcher lacks (it would stop following shapes)
        inference.dispatcher_.setdefault(op_type, inference._pass_on_shape_and_type)
    for op_type in _FLOAT_MATMUL_CONTRIB:
        inference.dispatcher_.setdefault(
            op_type, functools.partial(inference._compute_matmul_shape, output_dtype=onnx.TensorProto.FLOAT))
    try:  # its own entry point discards everything when one op is unknown to it: keep what it did infer
        inference._preprocess(ir.to_proto(model))
        while inference.run_:
            inference._infer_impl()
        inference._update_output_from_vi()
    except Exception:  # noqa: BLE001 - inference is best effort
        return
    _adopt_shapes(model, inference.out_mp_)


@functools.cache
def _ort_symbolic_inference() -> type:
    """ONNX Runtime's SymbolicShapeInference, loaded from its (self-contained) file: importing it as
    `onnxruntime.tools.symbolic_shape_infer` runs `onnxruntime/tools/__init__.py`, which imports torch when
    torch is installed — 1.7 s on every model load for nothing."""
    import importlib.util

    import onnxruntime

    path = Path(onnxruntime.__file__).parent / "tools" / "symbolic_shape_infer.py"
    spec = importlib.util.spec_from_file_location("graphprune._ort_symbolic_shape_infer", path)
    if spec is None or not path.is_file():
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        return SymbolicShapeInference
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SymbolicShapeInference


def _onnx_shape_inference(model: ir.Model) -> None:
    """ONNX's shape inference, merged type-exactly: a sequence or optional value keeps its type (onnx-ir's
    ShapeInferencePass would turn it into a tensor of the element type, which the checker then rejects)."""
    infer = functools.partial(onnx.shape_inference.infer_shapes, check_type=False, strict_mode=False,
                              data_prop=True)
    initializers = dict(model.graph.initializers)
    try:
        inferred = ir.serde.deserialize_model(call_onnx_api(infer, model))
    except Exception:  # noqa: BLE001 - inference is best effort
        # call_onnx_api takes the initializers out before serialising and does not put them back when that fails
        for name, value in initializers.items():
            model.graph.initializers[name] = value
        return
    for graph, inferred_graph in zip(model.graphs(), inferred.graphs(), strict=False):
        found = ir.convenience.create_value_mapping(inferred_graph)
        for name, value in ir.convenience.create_value_mapping(graph).items():
            new = found.get(name)
            if new is None or new.type is None:
                continue
            if not isinstance(new.type, ir.TensorType) or not isinstance(value.type, (ir.TensorType, type(None))):
                value.type = value.type or new.type
                continue
            value.dtype = new.dtype
            if new.shape is not None:
                value.shape = new.shape


def _adopt_shapes(model: ir.Model, inferred: onnx.ModelProto) -> None:
    """Copy ORT's inferred shapes onto values unless their own shape has more static dims (ORT's symbolic
    names relate dims across tensors, where ONNX's inference invents fresh ones). A shape contradicting a
    static size ONNX inferred is not taken (ORT's inference mis-handles some ops, e.g. Einsum with '...')."""
    shapes, dtypes = {}, {}
    for info in (*inferred.graph.value_info, *inferred.graph.output):
        if info.type.HasField("tensor_type") and info.type.tensor_type.HasField("shape"):
            shapes[info.name] = [d.dim_value if d.HasField("dim_value") and d.dim_value else (d.dim_param or None)
                                 for d in info.type.tensor_type.shape.dim]  # its 0 sizes are failed Slice bounds
            dtypes[info.name] = info.type.tensor_type.elem_type
    for node in model.graph:
        for value in node.outputs:
            new = shapes.get(value.name)
            if new is None:
                continue
            if value.dtype is None and dtypes[value.name]:
                value.dtype = ir.DataType(dtypes[value.name])
            old = None if value.shape is None else list(value.shape)
            if old is None or len(old) != len(new):
                value.shape = ir.Shape(new)
            elif _static_count(new) >= _static_count(old) and all(
                    not isinstance(o, int) or o == n for o, n in zip(old, new, strict=True)):
                value.shape = ir.Shape(new)


def _static_count(dims: list) -> int:
    return sum(isinstance(d, int) for d in dims)
