"""Save models atomically (staged beside the target, then renamed, the model file last: the commit point),
external data included, writing only the type annotations the source declared."""

from __future__ import annotations

import contextlib
import glob
import os
from pathlib import Path
from typing import Iterator

import onnx
import onnx_ir as ir

from graphprune.errors import GraphpruneError
from graphprune.io.load import external_data_files, source_files, unmap
from graphprune.io.staging import is_live, staging_folder, token_of
from graphprune.ir.model import DECLARED, uses_external_data


def model_files(path: str | os.PathLike) -> list[Path]:
    """`path` and the external data files the model there names (those that exist): what one output consists of."""
    path = Path(path)
    return [path, *[file for file in _data_files(path) if file.exists()]]


def _data_files(path: Path) -> list[Path]:
    """The external data files the ONNX model at `path` names (none when it is missing or unreadable)."""
    with contextlib.suppress(Exception):  # a damaged or foreign file being replaced names nothing we remove
        return external_data_files(onnx.load(path, load_external_data=False).graph, path.parent)
    return []


def save_model(model: ir.Model, path: str | os.PathLike, *, external_data: bool | None = None) -> None:
    """Write `model` to `path` atomically: files go to a staging folder beside it, then are renamed, the model
    last. Only the type annotations the source file declared are written (see `written_form`)."""
    with StagedModel(model, path, external_data=external_data) as staged:
        staged.publish()


def same_file(a: Path, b: Path) -> bool:
    """True when `a` and `b` name one file: same inode when both exist, else the same resolved path."""
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def _between_renames() -> None:
    """Called after the data are published and before the model is (a fault-injection point for tests)."""


class StagedModel:
    """`model` written once into a staging folder beside `target`: check the staged file (`path`), then `publish()`
    moves it into place. The model file is the single commit point: its external data get a name unique to this
    run (`TARGET.<run>.data`), are renamed first, and the model is renamed last; the data the replaced model read
    are removed after. A reader sees the old complete pair or the new one, never a mix. Leaving the `with` block
    removes whatever was not published (a data file published without its model included), so a failed check or
    an interrupted run leaves no partial output; data a killed run published are removed by the next run writing
    there. Files the run reads (`keep`, default: the model's sources) are never removed. Errors name the user's
    path, never the staging one."""

    def __init__(self, model: ir.Model, target: str | os.PathLike, *, external_data: bool | None = None,
                 keep: list[Path] | None = None) -> None:
        self.target = Path(target)
        self.keep = source_files(model) if keep is None else keep
        external_data = uses_external_data(model) if external_data is None else external_data
        self._stack = contextlib.ExitStack()
        self._published: list[Path] = []
        try:
            self.target.parent.mkdir(parents=True, exist_ok=True)
            self.folder = self._stack.enter_context(staging_folder(self.target.parent))
            self.data = [self.target.with_name(f"{self.target.name}.{token_of(self.folder)}.data")] \
                if external_data else []
            self._remove(self._orphans())
            with written_form(model):
                ir.save(model, self.path, external_data=self.data[0].name if self.data else None,
                        callback=lambda tensor, info: unmap(model))
        except BaseException as exc:
            self._stack.close()
            if isinstance(exc, OSError):
                raise GraphpruneError(f"cannot write {self.target}: {exc.strerror or exc}") from exc
            raise

    @property
    def path(self) -> Path:
        return self.folder / self.target.name

    def publish(self) -> None:
        try:
            for file in self.data:
                os.replace(self.folder / file.name, file)
                self._published.append(file)
            _between_renames()
            superseded = [file for file in _data_files(self.target) if self._ours(file)]  # read just before
            os.replace(self.path, self.target)
        except OSError as exc:
            raise GraphpruneError(f"cannot write {self.target}: {exc.strerror or exc}") from exc
        self._published.clear()  # committed: the data now belong to the published model
        self._remove(file for file in superseded if file not in self.data)

    def _ours(self, file: Path) -> bool:
        """True for a data file this tool writes for `target` (`TARGET.data`, `TARGET.<run>.data`) beside it."""
        name, stem = file.name, self.target.name
        if file.parent != self.target.parent or not (name.startswith(stem + ".") and name.endswith(".data")):
            return False
        token = name[len(stem) + 1:-len(".data")]
        return token == "" or (len(token) == 8 and all(c in "0123456789abcdef" for c in token))

    def _orphans(self) -> list[Path]:
        """Data files a killed run published for `target` without its model: named by a run no longer running,
        not read by the model now at `target`."""
        folder = self.target.parent
        candidates = [file for file in folder.glob(f"{glob.escape(self.target.name)}.*.data")
                      if self._ours(file) and not is_live(folder, file.name[len(self.target.name) + 1:-5])]
        current = _data_files(self.target) if candidates else []
        return [file for file in candidates if file not in current]

    def _remove(self, files) -> None:
        for file in files:
            if not any(same_file(file, kept) for kept in self.keep if kept.exists()):
                file.unlink(missing_ok=True)

    def __enter__(self) -> "StagedModel":
        return self

    def __exit__(self, *exc_info) -> None:
        try:
            self._remove(self._published)
        finally:
            self._stack.close()


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
    with staging_folder() as folder:
        path = folder / "model.onnx"
        save_model(model, path)
        yield path


def to_proto(model: ir.Model) -> onnx.ModelProto:
    """The ModelProto `save_model` would write (declared annotations only), for in-memory checks."""
    with written_form(model):
        return ir.to_proto(model)


def to_bytes(model: ir.Model) -> bytes:
    """Serialise a model that fits in one protobuf (tests, in-memory sessions)."""
    return to_proto(model).SerializeToString()
