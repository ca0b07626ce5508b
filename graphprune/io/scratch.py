"""Scratch memory outside the process's anonymous memory: arrays mapped from unlinked temporary files."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

from graphprune.errors import GraphpruneError
from graphprune.io.staging import staging_folder

_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}  # reserving failed for want of space


def spilled(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A zeroed array mapped from an unlinked temporary file: page cache the kernel writes out under memory
    pressure, never anonymous memory that statistics or refit weights growing with the model could exhaust;
    gone however the process ends. Its blocks are reserved first: a full disk is one clear error here, not a
    SIGBUS when a page is first written."""
    nbytes = max(int(np.prod(shape)) * np.dtype(dtype).itemsize, 1)
    with tempfile.TemporaryFile(prefix="graphprune-") as file:
        try:
            os.posix_fallocate(file.fileno(), 0, nbytes)
        except OSError as exc:
            if exc.errno not in _FULL:  # a filesystem that cannot reserve: a sparse file, as before
                file.truncate(nbytes)
            else:
                raise GraphpruneError(f"no room for {nbytes / 2**20:.1f} MiB of scratch in the temporary folder "
                                      f"{tempfile.gettempdir()} ({exc.strerror or exc}): point TMPDIR at a folder "
                                      "with more free space") from exc
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


@contextlib.contextmanager
def scratch_folder() -> Iterator[Path]:
    """Inside: the current folder is a new temporary one, removed afterwards. ONNX Runtime's tools write scratch
    files into the current folder (its symbolic shape inference leaves `sym_shape_infer_temp.onnx` and a data
    file there when inference is incomplete); run them in here, with absolute paths."""
    previous = os.getcwd()
    with staging_folder() as folder:
        os.chdir(folder)
        try:
            yield Path(folder)
        finally:
            os.chdir(previous)
