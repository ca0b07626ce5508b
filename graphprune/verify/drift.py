"""How far one model's outputs are from another's: the largest relative error (verification's drift) and the
squared error ratio (measured sensitivity's error)."""

from __future__ import annotations

import numpy as np


def max_relative_error(reference: list[np.ndarray], actual: list[np.ndarray]) -> float:
    """Largest ‖ref − act‖∞ / max(‖ref‖∞, 1e-12) over paired outputs (inf on a shape mismatch)."""
    worst = 0.0
    for ref, act in zip(reference, actual, strict=True):
        if ref.shape != act.shape:
            return float("inf")
        ref64, act64 = ref.astype(np.float64), act.astype(np.float64)
        scale = max(float(np.max(np.abs(ref64), initial=0.0)), 1e-12)
        worst = max(worst, float(np.max(np.abs(ref64 - act64), initial=0.0)) / scale)
    return worst


def squared_error_ratio(dense: list[list[np.ndarray]], masked: list[list[np.ndarray]]) -> float:
    """Σ‖y − ŷ‖² / Σ‖y‖² over every floating-point output of every batch."""
    num = den = 0.0
    for reference, actual in zip(dense, masked, strict=True):
        for y, y_hat in zip(reference, actual, strict=True):
            if np.issubdtype(y.dtype, np.floating):
                num += float(np.sum((y.astype(np.float64) - y_hat) ** 2))
                den += float(np.sum(y.astype(np.float64) ** 2))
    return num / max(den, 1e-30)
