"""The measured output error that allocation compares: padding positions of per-token outputs do not count."""

from __future__ import annotations

import numpy as np

from graphprune.verify.drift import squared_error_ratio


def test_padding_positions_do_not_count_and_real_ones_do():
    """A change only at the positions the attention mask marks as padding is no error with the feeds given (and
    is one without them); the same change at a real position is; a pooled [batch, features] output is compared
    whole even when its width equals the sequence length."""
    rng = np.random.default_rng(0)
    hidden = rng.standard_normal((2, 4, 3)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]])
    feeds = [{"input_ids": np.ones((2, 4), np.int64), "attention_mask": mask}]
    at_padding, at_real = hidden.copy(), hidden.copy()
    at_padding[0, 3] += 5.0
    at_padding[1, 2:] -= 3.0
    at_real[1, 1] += 5.0
    assert squared_error_ratio([[hidden]], [[at_padding]], feeds) == 0.0
    assert squared_error_ratio([[hidden]], [[at_padding]]) > 0.1
    assert squared_error_ratio([[hidden]], [[at_real]], feeds) > 0.1
    pooled = rng.standard_normal((2, 4)).astype(np.float32)
    moved = pooled.copy()
    moved[0, 3] += 5.0
    assert squared_error_ratio([[pooled]], [[moved]], feeds) > 0.1
