"""Load ONNX models into onnx-ir and save them atomically, external data included."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx
import onnx_ir as ir
from onnx_ir.passes.common import LiftConstantsToInitializersPass
from onnx_ir.passes.common._c_api_utils import call_onnx_api

from graphprune import ops, progress
from graphprune.canonicalize import canonicalize
from graphprune.errors import GraphpruneError, ModelLoadError

PROTOBUF_LIMIT = 2**31 - 1
SOURCE_FILES = "graphprune.source_files"  # model.meta: every file the loaded model reads
DECLARED = "graphprune.declared"  # model.meta: names of intermediate values whose type the file declared
MAPPED = "graphprune.mapped"  # model.meta: the external tensors loaded from the file (memory-mapped when read)


def load_model(path: str | os.PathLike) -> ir.Model:
    """Read an ONNX file (external data kept lazy), lift Constant nodes to initializers, infer shapes.
    Models whose value names are not unique are refused: runtimes disagree on which copy they use."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such file")
    with progress.step(f"loading {path.name}"):
        try:
            proto = onnx.load(path, load_external_data=False)
        except Exception as exc:  # protobuf raises several unrelated types on garbage input
            raise ModelLoadError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from exc
        if not proto.graph.node and not proto.graph.output:
            raise ModelLoadError(f"{path}: the file parsed but holds no ONNX graph")
        _refuse_duplicate_names(proto.graph, path)
        try:
            model = ir.serde.deserialize_model(proto)
        except Exception as exc:  # noqa: BLE001 - onnx-ir raises SerdeError wrapping many causes
            raise ModelLoadError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from exc
        ir.external_data.set_base_dir(model.graph, path.parent)
        model.meta[SOURCE_FILES] = [path, *external_data_files(proto.graph, path.parent)]
        model.meta[MAPPED] = [v.const_value for v in model.graph.initializers.values()
                              if isinstance(v.const_value, ir.ExternalTensor)]
    with progress.step("inferring shapes"):
        return prepare(model)


def _refuse_duplicate_names(graph: onnx.GraphProto, path: Path) -> None:
    """Raise when a value name is defined twice (two initializers, or an initializer and a node output):
    ONNX forbids it, and which copy a runtime then uses differs between runtimes and versions."""
    definitions = [t.name for t in graph.initializer] + [o for n in graph.node for o in n.output if o]
    seen: set[str] = set()
    duplicates = sorted({name for name in definitions if name in seen or seen.add(name)})
    if duplicates:
        shown = ", ".join(repr(d) for d in duplicates[:5]) + (" …" if len(duplicates) > 5 else "")
        raise ModelLoadError(f"{path}: value names defined more than once ({shown}); ONNX requires unique names "
                             "and runtimes disagree on which copy they use: de-duplicate the model first")


def external_data_files(graph: onnx.GraphProto, base: Path) -> list[Path]:
    """The external data files the graph's initializers and Constant nodes point to."""
    tensors = list(graph.initializer) + [a.t for n in graph.node if n.op_type == "Constant" for a in n.attribute
                                         if a.type == onnx.AttributeProto.TENSOR]
    files = {entry.value for t in tensors if t.data_location == onnx.TensorProto.EXTERNAL
             for entry in t.external_data if entry.key == "location"}
    return [base / name for name in sorted(files)]


def source_files(model: ir.Model) -> list[Path]:
    """Every file a loaded model reads (the model and its external data); empty for in-memory models."""
    return list(model.meta.get(SOURCE_FILES, []))


FILL_ROUNDS = 4
CANONICAL_ROUNDS = 5  # canonicalise ↔ re-infer shapes, while something changes
_SAME_SHAPE_CONTRIB = ("QLinearSoftmax", "QLinearSigmoid", "QLinearLeakyRelu")
_FLOAT_MATMUL_CONTRIB = ("DynamicQuantizeMatMul", "MatMulIntegerToFloat")  # A @ B → float


def prepare(model: ir.Model) -> ir.Model:
    """Normalise a model for analysis: weights as initializers, shapes inferred where possible."""
    model.meta[DECLARED] = {v.name for node in model.graph for v in node.outputs if v.type is not None}
    LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
    # declared shapes of intermediate values can be stale (jax2onnx leaves NHWC ones on NCHW tensors): infer
    # without them, then keep each declaration that inference does not contradict (its names relate dims)
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
    for _ in range(FILL_ROUNDS):  # contrib ops' shapes unlock ONNX inference after them, and so on
        if not fill_unknown_shapes(model):
            break
        infer_shapes(model)
    for _ in range(CANONICAL_ROUNDS):
        if not canonicalize(model):
            break
        infer_shapes(model)
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
    if uses_external_data(model) or _initializer_bytes(model) > PROTOBUF_LIMIT // 4:
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
        # onnx-ir 0.1 strips the initializers before serialising and never restores them when that fails
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


def _initializer_bytes(model: ir.Model) -> int:
    return sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)


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


def output_files(path: str | os.PathLike, external_data: bool) -> list[Path]:
    """The files `save_model` writes for `path`: the model, and its external data file when it has one."""
    path = Path(path)
    return [path, path.with_name(path.name + ".data")] if external_data else [path]


def save_model(model: ir.Model, path: str | os.PathLike, *, external_data: bool | None = None) -> None:
    """Write `model` to `path` atomically: files go to a temporary folder beside it, then are renamed.
    Only the type annotations the source file declared are written (see `written_form`)."""
    with StagedModel(model, path, external_data=external_data) as staged:
        staged.publish()


class StagedModel:
    """`model` written once into a staging folder beside `target`: check the staged file (`path`), then
    `publish()` renames it (and its data file) into place. Leaving the `with` block removes whatever was not
    published, so a failed check leaves no partial output. Errors name the user's path, never the staging one."""

    def __init__(self, model: ir.Model, target: str | os.PathLike, *, external_data: bool | None = None) -> None:
        self.target = Path(target)
        external_data = uses_external_data(model) if external_data is None else external_data
        self.files = output_files(self.target, external_data)
        try:
            self.target.parent.mkdir(parents=True, exist_ok=True)
            self.folder = Path(tempfile.mkdtemp(prefix=".graphprune-", dir=self.target.parent))
        except OSError as exc:
            raise GraphpruneError(f"cannot write {self.target}: {exc.strerror or exc}") from exc
        try:
            with written_form(model):
                ir.save(model, self.path, external_data=self.files[1].name if external_data else None,
                        callback=lambda tensor, info: unmap(model))
        except BaseException as exc:
            shutil.rmtree(self.folder, ignore_errors=True)
            if isinstance(exc, OSError):
                raise GraphpruneError(f"cannot write {self.target}: {exc.strerror or exc}") from exc
            raise

    @property
    def path(self) -> Path:
        return self.folder / self.target.name

    def publish(self) -> None:
        try:
            for file in self.files[1:] + self.files[:1]:  # the model last: it names the data file
                os.replace(self.folder / file.name, file)
        except OSError as exc:
            raise GraphpruneError(f"cannot write {self.target}: {exc.strerror or exc}") from exc

    def __enter__(self) -> "StagedModel":
        return self

    def __exit__(self, *exc_info) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def spilled(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A zeroed array mapped from an unlinked temporary file: page cache the kernel writes out under memory
    pressure, never anonymous memory that statistics or refit weights growing with the model could exhaust;
    gone however the process ends."""
    with tempfile.TemporaryFile(prefix="graphprune-") as file:
        return np.memmap(file, dtype=dtype, mode="w+", shape=shape)


SPILLED_BYTES = 1 << 20  # weights made in memory (refit, compensated) from this size are made in `spilled` files


def scratch_array(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """Zeros for a weight being remade (refit, compensated): `spilled` when large — remade weights can add up
    to most of the model; sessions read them as fed inputs, without a copy (see runtime.session)."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    return spilled(shape, dtype) if nbytes >= SPILLED_BYTES else np.zeros(shape, dtype)


def contiguous_scratch(array: np.ndarray) -> np.ndarray:
    """`array` itself when C-contiguous, else a contiguous copy made by `scratch_array`: a remade weight is
    handed to ONNX Runtime as it is stored, never copied into memory on the way."""
    if array.flags.c_contiguous:
        return array
    copy = scratch_array(array.shape, array.dtype)
    copy[...] = array
    return copy


def unmap(model: ir.Model) -> None:
    """Close the memory maps of the source's external tensors read so far: their pages leave this process's
    resident set (a tensor read again is mapped again). Called between tensors while writing, so reading
    the whole input never keeps it all resident; a map something still views is left open."""
    for tensor in model.meta.get(MAPPED, ()):
        if tensor.raw is not None:
            with contextlib.suppress(BufferError):
                tensor.release()


@contextlib.contextmanager
def written_form(model: ir.Model) -> Iterator[ir.Model]:
    """While inside, intermediate values carry only the type annotations their source file declared. Shapes
    graphprune inferred stay out of what is written: runtimes trust declared static shapes (ONNX Runtime
    plans buffer reuse on them), and an inference guess must not become a declaration."""
    declared = model.meta.get(DECLARED)
    if declared is None:
        yield model
        return
    outputs = {id(v) for v in model.graph.outputs}
    hidden = [(v, v.type, v.shape) for node in model.graph for v in node.outputs
              if v.type is not None and v.name not in declared and id(v) not in outputs]
    for value, _, _ in hidden:
        value.type, value.shape = None, None
    try:
        yield model
    finally:
        for value, type_, shape in hidden:
            value.type, value.shape = type_, shape


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


def to_proto(model: ir.Model) -> onnx.ModelProto:
    """The ModelProto `save_model` would write (declared annotations only), for in-memory checks."""
    with written_form(model):
        return ir.to_proto(model)


def to_bytes(model: ir.Model) -> bytes:
    """Serialise a model that fits in one protobuf (tests, in-memory sessions)."""
    return to_proto(model).SerializeToString()


def from_proto(proto: onnx.ModelProto) -> ir.Model:
    """Wrap an in-memory ModelProto, normalised like a loaded file."""
    return prepare(ir.from_proto(proto))
