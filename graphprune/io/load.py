"""Load ONNX files into onnx-ir: external data kept lazy (memory-mapped when read), duplicate names refused,
then normalised for analysis (`graphprune.canonicalize.prepare`)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import onnx
import onnx_ir as ir

from graphprune import progress
from graphprune.canonicalize import prepare
from graphprune.errors import ModelLoadError
from graphprune.ir.model import MAPPED, SOURCE_FILES


def load_model(path: str | os.PathLike) -> ir.Model:
    """Read an ONNX file (external data kept lazy), lift Constant nodes to initializers, infer shapes.
    Models whose value names are not unique are refused: runtimes disagree on which copy they use."""
    path = Path(path)
    if path.is_dir():
        raise ModelLoadError(f"{path} is a folder, not an ONNX model file")
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
        _refuse_damaged_tensors(proto.graph, path)
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


_PACKED = {onnx.TensorProto.INT4, onnx.TensorProto.UINT4, getattr(onnx.TensorProto, "FLOAT4E2M1", -1)}


def _data_bytes(tensor: onnx.TensorProto) -> int | None:
    """How many bytes of data `tensor`'s type and shape need (None for strings and unknown types)."""
    count = 1
    for dim in tensor.dims:
        count *= dim
    if tensor.data_type in _PACKED:
        return (count + 1) // 2
    try:
        return count * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, TypeError, ValueError):
        return None


def _refuse_damaged_tensors(graph: onnx.GraphProto, path: Path) -> None:
    """Raise naming the tensor, the file and the fault when a weight's stored bytes do not match its shape: a
    short or long `raw_data`, a missing external data file, one too short for the bytes the tensor names."""
    tensors = list(graph.initializer) + [a.t for n in graph.node if n.op_type == "Constant" for a in n.attribute
                                         if a.type == onnx.AttributeProto.TENSOR]
    sizes: dict[Path, int | None] = {}
    for tensor in tensors:
        need = _data_bytes(tensor)
        if need is None:
            continue
        what = f"tensor {tensor.name!r} ({onnx.TensorProto.DataType.Name(tensor.data_type).lower()} " \
               f"{list(tensor.dims)}, {need} bytes)"
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            if tensor.HasField("raw_data") and len(tensor.raw_data) != need:
                raise ModelLoadError(f"{path}: {what} stores {len(tensor.raw_data)} bytes of data: the model "
                                     "file is damaged")
            continue
        entries = {entry.key: entry.value for entry in tensor.external_data}
        file = path.parent / entries.get("location", "")
        offset, length = int(entries.get("offset", 0) or 0), entries.get("length")
        if file not in sizes:
            sizes[file] = file.stat().st_size if file.is_file() else None
        if sizes[file] is None:
            raise ModelLoadError(f"{path}: {what} is stored in {file}, which does not exist")
        if length is not None and int(length) != need:
            raise ModelLoadError(f"{path}: {what} is said to take {length} bytes of {file}: the model file is "
                                 "damaged")
        if offset + need > sizes[file]:
            raise ModelLoadError(f"{path}: {what} needs bytes {offset}–{offset + need} of {file}, which has "
                                 f"{sizes[file]}: the data file is truncated")


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


def unmap(model: ir.Model) -> None:
    """Close the memory maps of the source's external tensors read so far: their pages leave this process's
    resident set (a tensor read again is mapped again). Called between tensors while writing, so reading
    the whole input never keeps it all resident; a map something still views is left open."""
    for tensor in model.meta.get(MAPPED, ()):
        if tensor.raw is not None:
            with contextlib.suppress(BufferError):
                tensor.release()


def from_proto(proto: onnx.ModelProto) -> ir.Model:
    """Wrap an in-memory ModelProto, normalised like a loaded file."""
    return prepare(ir.from_proto(proto))
