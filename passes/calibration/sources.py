"""Calibration sources: batches of model inputs from a .npz/.npy file, a text file (token ids, or raw text through
a tokenizer), or a folder of images; each checked against the model's inputs before any work."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx_ir as ir

from graphprune.errors import GraphpruneError
from graphprune.io import runtime

Feeds = dict[str, np.ndarray]
log = logging.getLogger("graphprune")


def shared_rows(feeds: Feeds) -> int | None:
    """The leading size every input of a batch has (its rows, which can be cut apart), else None."""
    sizes = {len(array) if np.ndim(array) else 0 for array in feeds.values()}
    return sizes.pop() if len(sizes) == 1 else None


@dataclass
class Batches:
    """Calibration batches, how many samples they hold (the progress bar's total) and where they come from."""

    samples: int
    source: str
    iterator: Iterator[Feeds]

    def __iter__(self) -> Iterator[Feeds]:
        return self.iterator

    def conformed(self, model: ir.Model) -> "Batches":
        """The same batches checked against `model`'s inputs (names, ranks, static sizes, dtypes cast where
        lossless in kind); the first batch is checked now, so bad data fails before any work is done."""
        specs = runtime.input_specs(model)
        first = next(self.iterator, None)
        if first is None:
            raise GraphpruneError(f"{self.source}: calibration data holds no samples")
        first = runtime.conform_feeds(first, specs, self.source)

        def rest() -> Iterator[Feeds]:
            yield first
            for feeds in self.iterator:
                yield runtime.conform_feeds(feeds, specs, self.source)

        return Batches(self.samples, self.source, rest())


def _split(arrays: dict[str, np.ndarray], count: int, batch_size: int) -> Iterator[Feeds]:
    for start in range(0, count, batch_size):
        yield {name: array[start:start + batch_size] for name, array in arrays.items()}


def file_batches(path: str | os.PathLike, input_names: list[str], batch_size: int,
                 samples: int | None = None) -> Batches:
    """Batches from a .npz (arrays keyed by input name; a single-input model accepts any one key) or a .npy
    (single-input models), split along the first axis."""
    path = Path(path)
    if not path.is_file():
        raise GraphpruneError(f"{path}: no such calibration file")
    if path.suffix != ".npy":
        arrays = runtime.load_feeds(path, samples)
    elif len(input_names) != 1:
        raise GraphpruneError(f"{path}: a .npy file only serves a single-input model; use .npz keyed by input name")
    else:
        try:
            arrays = {input_names[0]: np.load(path, mmap_mode="r")[:samples]}
        except Exception as exc:  # noqa: BLE001 - numpy raises OSError, ValueError and pickle errors
            raise GraphpruneError(f"{path}: not a readable .npy file") from exc
    if len(input_names) == 1 and input_names[0] not in arrays and len(arrays) == 1:
        arrays = {input_names[0]: next(iter(arrays.values()))}
    missing = [n for n in input_names if n not in arrays]
    if missing:
        raise GraphpruneError(f"{path}: no arrays for model inputs {missing} (has {sorted(arrays)})")
    unknown = sorted(set(arrays) - set(input_names))
    if unknown:
        log.warning("%s: ignoring %s, which %s no input of the model (its inputs: %s)", path,
                    ", ".join(repr(k) for k in unknown), "is" if len(unknown) == 1 else "are", ", ".join(input_names))
    if any(arrays[n].ndim == 0 for n in input_names):
        raise GraphpruneError(f"{path}: arrays must have a leading sample axis")
    count = min(len(arrays[n]) for n in input_names)
    count = min(count, samples) if samples else count
    arrays = {n: arrays[n][:count] for n in input_names}
    runtime.require_finite(arrays, str(path))
    return Batches(count, str(path), _split(arrays, count, batch_size))


def token_batches(path: str | os.PathLike, input_names: list[str], batch_size: int,
                  samples: int | None = None, tokenizer: str | os.PathLike | None = None,
                  length: int | None = None, pack: bool = False) -> Batches:
    """Batches from a text file, one sequence per line: token ids (whitespace-separated integers), or raw
    text encoded by `tokenizer` (a Hugging Face tokenizer.json, with the `tokenizers` library). The ids input
    (`input_ids`, or the model's first input) is right-padded with 0 — to `length` tokens when given (longer
    lines cut), as a fixed-shape serving batch is; `pack` instead joins consecutive lines into rows of exactly
    `length` tokens, as long documents are. `attention_mask` and `token_type_ids` are added when the model has
    such inputs."""
    path = Path(path)
    try:
        lines = [line for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise GraphpruneError(f"{path}: not a readable text file") from exc
    lines = lines[:samples] if samples and not pack else lines
    if not lines:
        raise GraphpruneError(f"{path}: no sequences (one per line)")
    if tokenizer is not None:
        sequences = _encode(lines, tokenizer, length, pack)
    else:
        try:
            sequences = [np.array([int(t) for t in line.split()], dtype=np.int64) for line in lines]
        except ValueError as exc:
            raise GraphpruneError(f"{path}: not a token-id file (one line of integers per sequence); for raw "
                                  "text pass --tokenizer tokenizer.json") from exc
        if pack:
            stream = np.concatenate(sequences)
            sequences = [stream[i:i + length] for i in range(0, len(stream) - length + 1, length)] or [stream]
    sequences = [s[:length] for s in sequences[:samples]] if length else sequences
    return Batches(len(sequences), str(path), _token_feeds(sequences, input_names, batch_size, length))


def _encode(lines: list[str], tokenizer: str | os.PathLike, length: int | None = None,
            pack: bool = False) -> list[np.ndarray]:
    """Token ids of each line, special tokens included, truncated by the tokenizer to `length` (else as it says,
    else to 512); with `pack`, of consecutive lines joined until they fill `length` tokens (a last, shorter row
    only if it is the only one)."""
    try:
        from tokenizers import Tokenizer
    except ImportError as exc:
        message = "raw-text calibration needs the tokenizers library: pip install 'graphprune[text]'"
        raise GraphpruneError(message) from exc
    try:
        encoder = Tokenizer.from_file(str(tokenizer))
    except Exception as exc:  # noqa: BLE001 - tokenizers raises its own exception types
        raise GraphpruneError(f"{tokenizer}: not a readable tokenizer.json") from exc
    if length:
        encoder.enable_truncation(length)
    elif encoder.truncation is None:
        encoder.enable_truncation(512)
    encoder.no_padding()
    if not pack:
        return [np.array(encoding.ids, dtype=np.int64) for encoding in encoder.encode_batch(lines)]
    rows, joined = [], []
    for line in lines:
        joined.append(line)
        ids = encoder.encode(" ".join(joined)).ids
        if len(ids) >= length:
            rows.append(np.array(ids, dtype=np.int64))
            joined = []
    return rows or [np.array(encoder.encode(" ".join(joined)).ids, dtype=np.int64)]


def _token_feeds(sequences: list[np.ndarray], input_names: list[str], batch_size: int,
                 length: int | None = None) -> Iterator[Feeds]:
    """Batches of sequences of similar length (sorted, stable): padding positions are computed but mean
    nothing, so the fewer there are, the less they weigh in the statistics. With `length`, every row is
    padded to it."""
    ids_name = "input_ids" if "input_ids" in input_names else input_names[0]
    sequences = sorted(sequences, key=len)
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start:start + batch_size]
        width = length or max(len(s) for s in chunk)
        ids = np.zeros((len(chunk), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        for row, sequence in enumerate(chunk):
            ids[row, : len(sequence)], mask[row, : len(sequence)] = sequence, 1
        feeds = {ids_name: ids}
        if "attention_mask" in input_names:
            feeds["attention_mask"] = mask
        if "token_type_ids" in input_names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        yield feeds


@dataclass
class ImageSpec:
    """How to turn image files into a model input: resize, scale to [0, 1], normalise, lay out."""

    size: tuple[int, int] = (224, 224)  # height, width
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    layout: str = "NCHW"
    grayscale: bool = False


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


def image_batches(folder: str | os.PathLike, input_name: str, spec: ImageSpec, batch_size: int,
                  samples: int | None = None) -> Batches:
    """Batches from the image files of a folder (sorted by name), preprocessed by `spec`. Needs Pillow."""
    try:
        from PIL import Image
    except ImportError as exc:
        raise GraphpruneError("image folders need Pillow: pip install 'graphprune[images]'") from exc
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise GraphpruneError(f"{folder}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    files = files[:samples] if samples else files
    return Batches(len(files), str(folder), _image_feeds(files, input_name, spec, batch_size, Image))


def _image_feeds(files: list[Path], input_name: str, spec: ImageSpec, batch_size: int, Image) -> Iterator[Feeds]:
    mean, std = np.array(spec.mean, np.float32), np.array(spec.std, np.float32)
    for start in range(0, len(files), batch_size):
        images = []
        for file in files[start:start + batch_size]:
            try:
                with Image.open(file) as image:
                    image = image.convert("L" if spec.grayscale else "RGB").resize(spec.size[::-1], Image.BILINEAR)
                    array = np.asarray(image, dtype=np.float32) / 255.0
            except Exception as exc:  # noqa: BLE001 - Pillow raises several types on bad files
                raise GraphpruneError(f"{file}: not a readable image") from exc
            array = array[..., None] if array.ndim == 2 else array
            images.append((array - mean[: array.shape[-1]]) / std[: array.shape[-1]])
        batch = np.stack(images)
        yield {input_name: np.ascontiguousarray(batch.transpose(0, 3, 1, 2) if spec.layout == "NCHW" else batch)}
