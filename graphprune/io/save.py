"""Save models atomically (staged beside the target, then renamed), external data included, writing only the
type annotations the source declared."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import onnx
import onnx_ir as ir

from graphprune.errors import GraphpruneError
from graphprune.io.load import unmap
from graphprune.ir.model import DECLARED, uses_external_data


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
