"""How far one model's outputs are from another's: the largest relative error (verification's drift) and the
squared error ratio (measured sensitivity's error)."""

from __future__ import annotations

import numpy as np


def max_relative_error(reference: list[np.ndarray], actual: list[np.ndarray]) -> float:
    """Largest ‖ref − act‖∞ / max(‖ref‖∞, 1e-12) over paired outputs, on the elements the reference has finite
    (inf on a shape mismatch or where `actual` is non-finite and the reference is not: never a NaN that a
    `max` would drop)."""
    worst = 0.0
    for ref, act in zip(reference, actual, strict=True):
        if ref.shape != act.shape:
            return float("inf")
        ref64, act64 = ref.astype(np.float64), act.astype(np.float64)
        finite = np.isfinite(ref64)
        if not np.isfinite(act64[finite]).all():
            return float("inf")
        ref64, act64 = ref64[finite], act64[finite]
        scale = max(float(np.max(np.abs(ref64), initial=0.0)), 1e-12)
        worst = max(worst, float(np.max(np.abs(ref64 - act64), initial=0.0)) / scale)
    return worst


def new_non_finite(reference: list[np.ndarray], actual: list[np.ndarray]) -> int:
    """How many elements of `actual` are NaN or Inf where the paired `reference` element is finite."""
    count = 0
    for ref, act in zip(reference, actual, strict=True):
        if ref.shape == act.shape and act.dtype.kind in "fc":
            count += int(np.count_nonzero(np.isfinite(ref) & ~np.isfinite(act)))
    return count


def squared_error_ratio(dense: list[list[np.ndarray]], masked: list[list[np.ndarray]],
                        feeds: list[dict[str, np.ndarray]] | None = None) -> float:
    """Σ‖y − ŷ‖² / Σ‖y‖² over every floating-point output of every batch; with the batches' `feeds`, positions a
    2-D `attention_mask` input marks as padding do not count in outputs laid out [batch, seq, features…] (nobody
    reads them, and token reduction changes them without changing anything else)."""
    return SquaredError(dense, feeds)(masked)


class SquaredError:
    """`squared_error_ratio` against fixed dense outputs, Σ‖y‖² summed once: measured sensitivity compares a
    hundred masked runs with one dense run."""

    def __init__(self, dense: list[list[np.ndarray]], feeds: list[dict[str, np.ndarray]] | None = None) -> None:
        self.count = sum(len(batch) for batch in dense)
        self.compared: list[tuple[int, np.ndarray, np.ndarray | None]] = []  # (flat position, y, padding weight)
        position = 0
        for index, reference in enumerate(dense):
            mask = padding_mask(feeds[index]) if feeds is not None else None
            for y in reference:
                if np.issubdtype(y.dtype, np.floating):
                    weighted = mask is not None and y.ndim >= 3 and y.shape[:2] == mask.shape
                    self.compared.append((position, y, mask.reshape(mask.shape + (1,) * (y.ndim - 2))
                                          if weighted else None))
                position += 1
        self.total = sum(_squares(y, None, weight) for _, y, weight in self.compared)

    def __call__(self, masked: list[list[np.ndarray]]) -> float:
        actual = [y_hat for batch in masked for y_hat in batch]
        if len(actual) != self.count:
            raise ValueError("the masked run has other outputs than the dense one")
        errors = (_squares(y, actual[position], weight) for position, y, weight in self.compared)
        return sum(errors) / max(self.total, 1e-30)


def _squares(y: np.ndarray, y_hat: np.ndarray | None, weight: np.ndarray | None) -> float:
    """Σ w·(y − ŷ)² (Σ w·y² without ŷ): squares in float32 at least, summed in float64 (3x faster than float64
    copies of outputs that can be large)."""
    real = np.promote_types(y.dtype, np.float32)
    diff = np.subtract(y, y_hat, dtype=real) if y_hat is not None else y.astype(real)
    squares = np.square(diff, out=diff)
    if weight is not None:
        squares *= weight
    return float(np.sum(squares, dtype=np.float64))


def padding_mask(feeds: dict[str, np.ndarray]) -> np.ndarray | None:
    """The [batch, seq] mask of real tokens of a text batch (its 2-D `attention_mask` input), else None."""
    mask = feeds.get("attention_mask")
    return mask != 0 if mask is not None and mask.ndim == 2 else None
