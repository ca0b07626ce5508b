"""ONNX Runtime helpers: sessions from files or in-memory models, synthetic feeds, latency measurement."""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import statistics
import time
import zipfile
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from graphprune.errors import GraphpruneError
from graphprune.io.save import as_file, to_bytes, to_proto
from graphprune.ir.model import PROTOBUF_LIMIT, uses_external_data

InputSpec = tuple[list | None, np.dtype | None]  # dims (int, or a name/None where symbolic), dtype

ROUNDS = 5  # timing blocks two models alternate in
PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}
_providers: list[str] = PROVIDERS["cpu"]
log = logging.getLogger("graphprune")

_NUMPY_TYPES = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_, "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
}


@contextlib.contextmanager
def using(provider: str) -> Iterator[list[str]]:
    """Run every session created inside on `provider` ("cpu", "cuda"), falling back to the CPU with a warning
    where this onnxruntime lacks it (CUDA needs the `gpu` extra, onnxruntime-gpu, and a GPU)."""
    global _providers
    wanted = PROVIDERS[provider]
    available = ort.get_available_providers()
    if wanted[0] not in available:
        log.warning("%s is not available in this onnxruntime (available: %s); running on the CPU", wanted[0],
                    ", ".join(available))
        wanted = PROVIDERS["cpu"]
    previous, _providers = _providers, wanted
    try:
        yield wanted
    finally:
        _providers = previous


def provider_name() -> str:
    """The execution provider sessions are created on now ("CPUExecutionProvider", …)."""
    return _providers[0]


def session(model: ir.Model | str | os.PathLike, providers: list[str] | None = None,
            threads: int | None = None, timing: bool = False) -> ort.InferenceSession:
    """An InferenceSession for a model file or an in-memory model. An in-memory model whose weights live in
    external data files is read in place: ONNX Runtime maps those files itself (told their folder; nothing is
    written), or, where they lie in several folders, copies them from our maps. Sessions for
    checks and calibration skip weight prepacking (a copy of every MatMul/Conv weight, seconds per GB);
    `timing` sessions keep ONNX Runtime's defaults, as users run them."""
    options = ort.SessionOptions()
    options.log_severity_level = 4
    if not timing:
        options.add_session_config_entry("session.disable_prepacking", "1")
    if threads:
        options.intra_op_num_threads = threads
    providers = providers or _providers
    if isinstance(model, ir.Model) and not uses_external_data(model):
        sess = ort.InferenceSession(to_bytes(model), options, providers=providers)
    elif isinstance(model, ir.Model) and (files := _external_files(model)) is not None:
        with _handing_over(model, feed=providers[0] == "CPUExecutionProvider") as (fed, handed):
            proto = to_proto(model).SerializeToString()
        options.add_external_initializers(list(handed), [ort.OrtValue.ortvalue_from_numpy(a) for a in handed.values()])
        sess = (_session_reading_data_in_place(proto, files, options, providers) if files else None) \
            or _session_over_mapped_files(proto, files, options, providers)
        sess = _FedSession(sess, fed, handed) if fed or handed else sess
    else:
        with as_file(model) as path:
            sess = ort.InferenceSession(str(path), options, providers=providers)
    sess.graphprune_model = model  # random_feeds reads index ranges from it
    return sess


def conv_channel_block(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> int | None:
    """Channels ONNX Runtime's CPU convolutions compute as one block (MLAS's NCHWc layout): 16 with AVX-512F,
    8 with AVX2; None where unknown (no such file, other CPUs). A width between multiples runs as the next."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    return 16 if "avx512f" in flags else 8 if "avx2" in flags else None


def prefix_session(model: ir.Model, names: list[str], given: dict[str, np.ndarray] | None = None,
                   passing: bool = False) -> ort.InferenceSession:
    """A session over in-memory `model` (weights in memory) whose outputs are the tensors `names`, holding only
    the nodes they need: ONNX Runtime runs every node of a graph whatever its caller fetches, so a tensor early
    in the graph costs a whole forward pass unless the rest is cut away. Float weights from PREFIX_HANDED_BYTES
    are handed to ORT as buffers instead of serialised (a refit builds one such session per stage). `given`
    and `passing` as for `prefix_model`."""
    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.add_session_config_entry("session.disable_prepacking", "1")
    with _handing_over(model, feed=False, least=PREFIX_HANDED_BYTES) as (_, handed):
        proto = prefix_model(to_proto(model), names, given, passing)
    read = {t.name for t in proto.graph.initializer}
    handed = {name: array for name, array in handed.items() if name in read}
    if handed:
        options.add_external_initializers(list(handed), [ort.OrtValue.ortvalue_from_numpy(a) for a in handed.values()])
    return ort.InferenceSession(proto.SerializeToString(), options, providers=_providers)


def prefix_model(proto: onnx.ModelProto, names: list[str], given: dict[str, np.ndarray] | None = None,
                 passing: bool = False) -> onnx.ModelProto:
    """`proto` cut down to the nodes and initializers the tensors `names` need, those tensors its outputs. The
    tensors in `given` (name → an array of its type and rank) become inputs, their producers cut away too; with
    `passing`, the outputs also hold the tensors the cut computes that nodes outside it read (what a later cut
    can be given)."""
    graph, given = proto.graph, given or {}
    producer = {out: index for index, node in enumerate(graph.node) for out in node.output if out not in given}
    needed, stack = set(), [producer[name] for name in names if name in producer]
    while stack:
        index = stack.pop()
        if index not in needed:
            needed.add(index)
            stack.extend(producer[n] for n in graph.node[index].input if n in producer)
    nodes = [graph.node[index] for index in sorted(needed)]
    read = {n for node in nodes for n in node.input}
    outputs = list(names)
    if passing:
        made = {out for node in nodes for out in node.output}
        outside = {n for index, node in enumerate(graph.node) if index not in needed for n in node.input}
        outputs += sorted((made & outside) - set(names))
    inputs = list(graph.input) + [onnx.helper.make_tensor_value_info(
        name, onnx.helper.np_dtype_to_tensor_dtype(array.dtype), [None] * array.ndim)
        for name, array in given.items() if name in read]
    prefix = onnx.helper.make_graph(nodes, graph.name, inputs, [onnx.ValueInfoProto(name=n) for n in outputs],
                                    [t for t in graph.initializer if t.name in read])
    model = onnx.helper.make_model(prefix, opset_imports=proto.opset_import, ir_version=proto.ir_version)
    model.functions.extend(proto.functions)
    return model


_PASS_THROUGH = {"Cast", "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Identity"}


def index_ranges(model: ir.Model | str | os.PathLike) -> dict[str, int]:
    """Integer graph inputs that index a constant table (token ids into an embedding, position or segment ids;
    through Cast/Reshape-like ops) → the table's length along the gathered axis."""
    if not isinstance(model, ir.Model):
        model = ir.load(str(model))
    ranges: dict[str, int] = {}
    for value in model.graph.inputs:
        if value.dtype is None or not value.dtype.is_integer():
            continue
        frontier = [value]
        while frontier:
            current = frontier.pop()
            for usage in current.uses():
                node = usage.node
                if node.op_type in _PASS_THROUGH and usage.idx == 0:
                    frontier.extend(node.outputs)
                elif node.op_type == "Gather" and usage.idx == 1 and node.inputs[0].const_value is not None:
                    attr = node.attributes.get("axis")
                    length = int(node.inputs[0].const_value.shape[attr.as_int() if attr is not None else 0])
                    ranges[value.name] = min(ranges.get(value.name, length), length)
    return ranges


HANDED_OVER_BYTES = 2**20  # in-memory float tensors from this size are handed to ORT as buffers, not serialised
PREFIX_HANDED_BYTES = 2**14  # the same for prefix sessions, built many times over one model
_HANDED_OVER_TYPES = (np.float32, np.float16, np.float64)


def _hands_over(tensor: ir.TensorProtocol | None, least: int) -> bool:
    return (tensor is not None and not isinstance(tensor, ir.ExternalTensor) and tensor.nbytes >= least
            and tensor.dtype.numpy() in _HANDED_OVER_TYPES)


def _external_files(model: ir.Model) -> dict[str, Path] | None:
    """Location (as the model names it) → file, for every external data file the model's initializers read;
    None when the rest of the model (tensors not handed over) does not fit one protobuf."""
    files, inline = {}, 0
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if isinstance(tensor, ir.ExternalTensor):
            files[tensor.location] = Path(tensor.path)
        elif tensor is not None and not _hands_over(tensor, HANDED_OVER_BYTES):
            inline += tensor.nbytes
    return files if inline < PROTOBUF_LIMIT // 2 else None


_FED_READERS = {"Conv", "ConvTranspose", "MatMul", "Gemm", "Gather"}  # read a weight fed at run time as well


@contextlib.contextmanager
def _handing_over(model: ir.Model, feed: bool, least: int | None = None
                  ) -> Iterator[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
    """While inside, large in-memory float weights (refit, masked or compensated ones) are out of what gets
    serialised. Yields (fed, handed), name → array: with `feed` (sessions on the CPU: inputs are not copied
    to a device at every run), weights only linear ops read become graph inputs, fed at every run (ORT
    computes on our buffers, copying nothing); the others stand as external references to nowhere, their
    arrays handed over instead (`add_external_initializers`: ORT copies them once). The model is given back
    as it was, initializers in their order."""
    initializers = list(model.graph.initializers.values())
    least = HANDED_OVER_BYTES if least is None else least
    swapped = {value: value.const_value for value in model.graph.initializers.values()
               if _hands_over(value.const_value, least)}
    fed = {value for value in swapped if feed and not value.is_graph_output() and value.uses()
           and all(usage.node.op_type in _FED_READERS for usage in value.uses())}
    arrays = {value.name: np.ascontiguousarray(tensor.numpy()) for value, tensor in swapped.items()}
    for value, tensor in swapped.items():
        if value in fed:
            model.graph.initializers.pop(value.name)
            model.graph.inputs.append(value)
        else:
            value.const_value = ir.ExternalTensor(IN_MEMORY, 0, tensor.nbytes, tensor.dtype, shape=tensor.shape,
                                                  name=value.name)
    try:
        yield ({v.name: arrays[v.name] for v in fed},
               {v.name: arrays[v.name] for v in swapped if v not in fed})
    finally:
        for value in fed:
            model.graph.inputs.remove(value)
        for value, tensor in swapped.items():
            if value not in fed:
                value.const_value = tensor
        if fed:
            model.graph.initializers.clear()
            for value in initializers:
                model.graph.register_initializer(value)


class _FedSession:
    """An ORT session whose in-memory weights are graph inputs: every run feeds them, and they are not among
    the inputs callers see. Holds the arrays ORT computes on for as long as it lives."""

    def __init__(self, session: ort.InferenceSession, fed: dict[str, np.ndarray],
                 handed: dict[str, np.ndarray]) -> None:
        self._session, self._fed, self._handed = session, fed, handed

    def run(self, output_names, input_feed, run_options=None):
        return self._session.run(output_names, {**input_feed, **self._fed}, run_options)

    def get_inputs(self):
        return [spec for spec in self._session.get_inputs() if spec.name not in self._fed]

    def __getattr__(self, name: str):
        return getattr(self._session, name)


IN_MEMORY = "graphprune-in-memory"  # the location in-memory weights are said to have (never read)


def _session_reading_data_in_place(proto: bytes, files: dict[str, Path], options: ort.SessionOptions,
                         providers: list[str]) -> ort.InferenceSession | None:
    """ORT maps the external data files itself: the graph is handed over as bytes and told the folder the data's
    locations are relative to, so nothing is written anywhere (a killed run leaves nothing beside the input);
    None where the locations do not share one folder or this ONNX Runtime cannot open the model so."""
    folders = {path.parents[len(Path(location).parts) - 1] for location, path in files.items()}
    if len(folders) != 1:
        return None
    options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(folders.pop()))
    try:
        return ort.InferenceSession(proto, options, providers=providers)
    except Exception:  # noqa: BLE001 - an ONNX Runtime without the option: read them from our maps instead
        return None


def _session_over_mapped_files(proto: bytes, files: dict[str, Path], options: ort.SessionOptions,
                               providers: list[str]) -> ort.InferenceSession:
    """ORT reads each external data file from a read-only memory map of it (it copies what it needs while
    the session is created; the maps are released afterwards)."""
    maps: list[mmap.mmap] = []
    buffers: list[np.ndarray] = []
    try:
        for path in files.values():
            with open(path, "rb") as file:
                maps.append(mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ))
            buffers.append(np.frombuffer(maps[-1], dtype=np.uint8))
        options.add_external_initializers_from_files_in_memory(list(files), buffers, [b.size for b in buffers])
        return ort.InferenceSession(proto, options, providers=providers)
    finally:
        buffers.clear()  # the arrays export the maps' memory: drop them before closing the maps
        for mapped in maps:
            mapped.close()


def random_feeds(sess: ort.InferenceSession, batch: int = 1, seed: int = 0,
                 dims: dict[str, int] | None = None, side: int = 1) -> dict[str, np.ndarray]:
    """Random inputs matching the session's input specs (see `random_inputs`); integer inputs that index a table
    of the session's model are drawn over the table (`index_ranges`)."""
    specs = {spec.name: (list(spec.shape), _NUMPY_TYPES.get(spec.type, np.float32)) for spec in sess.get_inputs()}
    integer = any(np.issubdtype(dtype, np.integer) for _, dtype in specs.values())
    model = getattr(sess, "graphprune_model", None)
    ranges = index_ranges(model) if integer and model is not None else None
    return random_inputs(specs, batch, seed, dims, side, ranges)


def random_inputs(specs: dict[str, InputSpec], batch: int = 1, seed: int = 0, dims: dict[str, int] | None = None,
                  side: int = 1, ranges: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """Seeded random inputs for `specs`; symbolic dims take `dims[name]`, else `batch` for the leading axis and
    `side` elsewhere. Integer inputs in `ranges` (indices into a table) are uniform over it; other integer and
    boolean inputs are ones (attention masks that attend everywhere)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for name, (spec_dims, dtype) in specs.items():
        shape = [d if isinstance(d, int) else (dims or {}).get(d, batch if axis == 0 else side)
                 for axis, d in enumerate(spec_dims or [])]
        dtype = dtype or np.float32
        if np.issubdtype(dtype, np.floating):
            feeds[name] = rng.standard_normal(shape).astype(dtype)
        elif name in (ranges or {}):
            feeds[name] = rng.integers(0, ranges[name], size=shape).astype(dtype)
        else:
            feeds[name] = np.ones(shape, dtype)
    return feeds


def input_specs(model: ir.Model) -> dict[str, InputSpec]:
    """Name → (dims, numpy dtype) of the model's graph inputs (initializers excluded)."""
    specs = {}
    for value in model.graph.inputs:
        if value.is_initializer():
            continue
        dims = [d if isinstance(d, int) else d.value for d in value.shape.dims] if value.shape is not None else None
        specs[value.name] = (dims, value.dtype.numpy() if value.dtype is not None else None)
    return specs


def conform_feeds(feeds: dict[str, np.ndarray], specs: dict[str, InputSpec], origin: str) -> dict[str, np.ndarray]:
    """Check user-supplied arrays against the model's inputs — every input present, ranks and static sizes
    equal, numbers of a compatible kind — and cast them to the input dtypes. Raises GraphpruneError naming
    `origin` (a file) and the offending input."""
    missing = [name for name in specs if name not in feeds]
    if missing:
        raise GraphpruneError(f"{origin}: no arrays for model inputs {missing} (has {sorted(feeds)})")
    conformed = {}
    for name, (dims, dtype) in specs.items():
        array = np.asarray(feeds[name])
        shown = "[" + ", ".join(str(d) for d in dims) + "]" if dims is not None else "?"
        if array.dtype.kind not in "biuf":
            raise GraphpruneError(f"{origin}: input {name!r} got {array.dtype} values, not numbers")
        if dims is not None and (array.ndim != len(dims) or any(
                isinstance(d, int) and d != n for d, n in zip(dims, array.shape, strict=True))):
            raise GraphpruneError(f"{origin}: input {name!r} takes arrays shaped {shown}, got {list(array.shape)}")
        if dtype is not None and array.dtype != dtype:
            if np.dtype(dtype).kind in "iub" and array.dtype.kind == "f":
                raise GraphpruneError(f"{origin}: input {name!r} takes {np.dtype(dtype)}, got {array.dtype}")
            array = array.astype(dtype)
        conformed[name] = array
    return conformed


def load_feeds(path: str | os.PathLike, samples: int | None = None) -> dict[str, np.ndarray]:
    """Arrays keyed by input name from a .npz file; with `samples`, only each array's leading `samples` rows
    are read (streamed out of the archive: a large file costs the memory of what is used, not its size)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return {name[:-len(".npy")]: _leading_rows(archive, name, samples)
                    for name in archive.namelist() if name.endswith(".npy")}
    except Exception as exc:  # noqa: BLE001 - numpy and zipfile raise OSError, ValueError, BadZipFile…
        raise GraphpruneError(f"{path}: not a readable .npz file of arrays keyed by input name") from exc


_NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def _leading_rows(archive: zipfile.ZipFile, name: str, samples: int | None) -> np.ndarray:
    """The first `samples` rows (all when None) of one .npy member, reading no more of it than they take."""
    with archive.open(name) as member:
        header = _NPY_HEADERS.get(np.lib.format.read_magic(member))
        shape, fortran, dtype = header(member) if header else ((), True, np.dtype(object))
        if samples is None or fortran or dtype.hasobject or not shape:
            member.seek(0)
            return np.lib.format.read_array(member, allow_pickle=False)
        shape = (min(shape[0], samples), *shape[1:])
        count = int(np.prod(shape))
        data = member.read(count * dtype.itemsize)
        if len(data) != count * dtype.itemsize:
            raise ValueError(f"{name} is truncated")
        return np.frombuffer(data, dtype=dtype, count=count).reshape(shape)


def require_finite(arrays: dict[str, np.ndarray], origin: str) -> None:
    """Raise naming the input and the first sample when a floating-point array holds NaN or Inf: one such value
    in calibration data makes statistics, compensation and refit non-finite, and the pruned model with them."""
    for name, array in arrays.items():
        if array.dtype.kind in "fc" and not np.isfinite(array).all():
            bad = ~np.isfinite(array)
            first = int(np.argwhere(bad)[0][0]) if array.ndim else 0
            raise GraphpruneError(f"{origin}: input {name!r} holds {int(bad.sum())} NaN or Inf value(s) (the "
                                  f"first in sample {first}); calibration values must be finite")


def round_ratios(first_ms: list[float], second_ms: list[float], rounds: int = ROUNDS) -> list[float]:
    """Per interleaving round (see `interleaved_ms`), the second model's median time over the first's. Their
    median is the ratio to report: it always lies inside their range, where a ratio of overall medians may not."""
    blocks = np.array_split(np.arange(len(first_ms)), rounds)
    return [statistics.median(np.take(second_ms, b)) / statistics.median(np.take(first_ms, b))
            for b in blocks if len(b)]


def run(sess: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return sess.run(None, feeds)


def interleaved_ms(sessions: list[ort.InferenceSession], feeds: list[dict[str, np.ndarray]], warmup: int = 5,
                   runs: int = 50, rounds: int = ROUNDS) -> list[list[float]]:
    """Wall times (ms) of `runs` runs of each session, taken in `rounds` alternating blocks (A, B, A, B…) so
    that load drift on the machine hits every model alike; warm-up runs first."""
    runners = [_runner(sess, inputs) for sess, inputs in zip(sessions, feeds, strict=True)]
    for once in runners:
        for _ in range(warmup):
            once()
    times: list[list[float]] = [[] for _ in sessions]
    per_round = [runs // rounds + (1 if r < runs % rounds else 0) for r in range(rounds)]
    for count in per_round:
        for index, once in enumerate(runners):
            for _ in range(count):
                start = time.perf_counter()
                once()
                times[index].append((time.perf_counter() - start) * 1e3)
    return times


DEVICES = {"CUDAExecutionProvider": "cuda"}  # OrtValue device names of the providers that have their own memory


def device_of(sess: ort.InferenceSession) -> str | None:
    """The device (OrtValue name) `sess` computes on, None for the host."""
    return DEVICES.get(sess.get_providers()[0])


def _runner(sess: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> Callable[[], object]:
    """One run of `sess` on `feeds`, as timed: on a device, inputs are copied there once and outputs stay there
    (IO binding), so the time is the model's and not the host transfers' (a 512-token LLaMA's logits alone
    are 65 MB)."""
    device = device_of(sess)
    if device is None:
        return lambda: sess.run(None, feeds)
    binding = sess.io_binding()
    inputs = {name: ort.OrtValue.ortvalue_from_numpy(array, device, 0) for name, array in feeds.items()}
    for name, value in inputs.items():
        binding.bind_ortvalue_input(name, value)
    for output in sess.get_outputs():
        binding.bind_output(output.name, device)
    return lambda: (inputs, sess.run_with_iobinding(binding))  # the closure keeps the device inputs alive


def latency_ms(sess: ort.InferenceSession, feeds: dict[str, np.ndarray], warmup: int = 5,
               runs: int = 50) -> float:
    """Median wall time of one run, in milliseconds, after warm-up runs."""
    once = _runner(sess, feeds)
    for _ in range(warmup):
        once()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        once()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3
