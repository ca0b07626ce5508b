"""The packaged demo model: a residual CNN trained on sklearn's digits, its held-out test split, accuracy."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from graphprune.io import runtime

DATA = Path(__file__).resolve().parent / "data"
DEMO_MODEL = DATA / "digits_cnn.onnx"
DEMO_TEST_SET = DATA / "digits_test.npz"


def digits_test_set() -> tuple[np.ndarray, np.ndarray]:
    """The held-out digits split the demo model never saw: images [N, 1, 8, 8] in [0, 1], labels [N]."""
    with np.load(DEMO_TEST_SET) as data:
        return data["x"], data["y"]


def accuracy(model_path: str | Path, x: np.ndarray, y: np.ndarray) -> float:
    sess = runtime.session(model_path)
    logits = runtime.run(sess, {sess.get_inputs()[0].name: x})[0]
    return float((logits.argmax(1) == y).mean())


