"""Where calibration data comes from (`CalibrationSpec`: a file, token ids or raw text, an image folder, or
synthetic inputs) and running it into statistics."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import onnx_ir as ir

from graphprune.analysis.coupling import Analysis
from graphprune.errors import GraphpruneError
from graphprune.passes.calibration.norm_moments import use_norm_moments
from graphprune.passes.calibration.sources import Batches, Feeds, ImageSpec, file_batches, image_batches, token_batches
from graphprune.passes.calibration.statistics import Calibration, calibrate
from graphprune.passes.calibration.synthetic import sizes_images, synthetic_batches

log = logging.getLogger("graphprune")


@dataclass
class CalibrationSpec:
    """Where calibration data comes from: a .npz/.npy file, a .txt of token ids (or of raw text, with a
    `tokenizer`), a folder of images (preprocessed by `image`), or synthetic inputs (data-free)."""

    path: str | None = None
    data_free: bool = False
    samples: int = 128
    batch_size: int = 16
    image: ImageSpec | None = None
    match_bn: bool = False
    tokenizer: str | None = None
    smooth_images: bool = False
    length: int | None = None  # text rows padded (or, with `pack`, filled) to this many tokens
    pack: bool = False

    def wanted(self) -> bool:
        return self.path is not None or self.data_free

    def check(self) -> None:
        """Refuse settings that cannot work, before any data is read."""
        if self.samples < 1 or self.batch_size < 1:
            raise GraphpruneError(f"calibration needs samples ≥ 1 and batch size ≥ 1 (got {self.samples}, "
                                  f"{self.batch_size})")
        if self.path is not None and not Path(self.path).exists():
            raise GraphpruneError(f"{self.path}: no such calibration file or folder")
        if self.tokenizer is not None and not Path(self.tokenizer).is_file():
            raise GraphpruneError(f"{self.tokenizer}: no such tokenizer file")
        if self.smooth_images and not (self.data_free and self.path is None):
            raise GraphpruneError("--smooth-images shapes synthetic images: it needs --data-free (and no --calib)")
        if self.pack and self.length is None:
            raise GraphpruneError("--calib-pack fills rows of --calib-length tokens: give --calib-length N")
        if self.length is not None and (self.length < 1 or Path(self.path or "").suffix != ".txt"):
            raise GraphpruneError(f"--calib-length shapes text calibration (a .txt, {self.length} ≥ 1 tokens per "
                                  f"row); {self.path or 'synthetic data'} has shapes of its own")

    def open(self, model: ir.Model, seed: int = 0) -> Batches:
        """The batches this spec names, checked against `model`'s inputs (the first batch right away); call
        `check` first, before any other work."""
        inputs = [v.name for v in model.graph.inputs if not v.is_initializer()]
        if self.path and Path(self.path).is_dir():
            batches = image_batches(self.path, inputs[0], self.image or ImageSpec(), self.batch_size, self.samples)
        elif self.path and Path(self.path).suffix == ".txt":
            batches = token_batches(self.path, inputs, self.batch_size, self.samples, self.tokenizer,
                                    self.length, self.pack)
        elif self.path:
            batches = file_batches(self.path, inputs, self.batch_size, self.samples)
        elif self.data_free:
            batches = synthetic_batches(model, self.batch_size, self.samples, seed, self.match_bn, self.image,
                                        self.smooth_images)
        else:
            raise GraphpruneError("calibration needs data: pass --calib FILE or --data-free")
        return batches.conformed(model)


def run_calibration(analysis: Analysis, spec: CalibrationSpec, seed: int = 0, gram_limit: int = 0) -> Calibration:
    """Collect statistics for `analysis` from the source `spec` names (Gram matrices up to `gram_limit`)."""
    spec.check()
    return calibrated(analysis, spec.open(analysis.model, seed), gram_limit, spec)


def calibrated(analysis: Analysis, batches: Iterable[Feeds], gram_limit: int, spec: CalibrationSpec) -> Calibration:
    """Calibration statistics; data-free, BatchNormalization outputs take the moments the BN's parameters imply."""
    data_free = spec.data_free and not spec.path
    try:
        stats = calibrate(analysis, batches, gram_limit)
    except GraphpruneError as exc:
        image = spec.image or ImageSpec()
        if not data_free or not sizes_images(analysis.model, image):
            raise
        height, width = image.size
        raise GraphpruneError(f"{exc}; synthetic images are {height}x{width} where the model leaves their size "
                              "open: pass the size it reads with --image-size H W") from exc
    if data_free:
        log.info("data-free: %d tensors take their BatchNormalization's moments", use_norm_moments(analysis, stats))
    return stats
