"""Data-free inputs: images smooth as images are, sized where the model leaves their size open, and moments
solved from the first BatchNormalization."""

from __future__ import annotations

import numpy as np
import pytest

from graphprune.errors import GraphpruneError
from graphprune.io import runtime
from graphprune.passes.calibration.sources import ImageSpec
from graphprune.passes.calibration.synthetic import SMOOTHING, bn_matched_moments, smooth_images, synthetic_batches
from tests.graphs import GraphBuilder
from tests.harness import load

RNG = np.random.default_rng(0)


def conv_model(dims: list) -> object:
    b = GraphBuilder()
    conv = b.op("Conv", ["x", b.const(RNG.standard_normal((4, 3, 3, 3)).astype(np.float32))], kernel_shape=[3, 3])
    return load(b.build({"x": dims}, [b.head(b.op("Relu", [conv]), 4)]))


def lag_one(images: np.ndarray, axis: int) -> float:
    """Correlation of each pixel with its neighbour along `axis`."""
    first, second = (np.take(images, range(s, images.shape[axis] - 1 + s), axis=axis).ravel() for s in (0, 1))
    return float(np.corrcoef(first, second)[0, 1])


def test_smooth_images_are_standard_normal_pixels_blurred_by_a_twentieth_of_the_shorter_side():
    """Blurring white noise by a Gaussian of σ makes neighbours correlate exp(-1/(4σ²)): 0.907 at σ = 32/20
    along both axes, whatever the layout; channels stay independent; 8x8 images stay nearly white."""
    images = smooth_images(np.random.default_rng(1), (512, 2, 32, 64), (2, 3))
    assert abs(images.mean()) < 0.02 and abs(images.std() - 1) < 0.02
    expected = np.exp(-1 / (4 * (32 / SMOOTHING) ** 2))
    np.testing.assert_allclose([lag_one(images, 2), lag_one(images, 3)], expected, atol=0.01)
    nhwc = smooth_images(np.random.default_rng(1), (256, 32, 64, 3), (1, 2))
    np.testing.assert_allclose([lag_one(nhwc, 1), lag_one(nhwc, 2)], expected, atol=0.01)
    assert abs(np.corrcoef(nhwc[..., 0].ravel(), nhwc[..., 1].ravel())[0, 1]) < 0.02
    assert lag_one(smooth_images(np.random.default_rng(1), (4096, 1, 8, 8), (2, 3)), 3) < 0.35


def test_data_free_images_are_white_unless_smooth_is_asked_and_other_inputs_stay_white():
    b = GraphBuilder()
    conv = b.op("Conv", ["x", b.const(RNG.standard_normal((4, 3, 3, 3)).astype(np.float32))], kernel_shape=[3, 3])
    summed = b.op("Add", [b.op("ReduceMean", [conv], axes=[2, 3], keepdims=0), b.op("MatMul", ["v", b.const(
        RNG.standard_normal((5, 4)).astype(np.float32))])])
    model = load(b.build({"x": ["batch", 3, 16, 16], "v": ["batch", 5]}, {summed: ["batch", 4]}))
    for smooth in (False, True):
        batches = synthetic_batches(model, 256, 256, smooth=smooth)
        (feeds,) = list(batches)
        image, vector = feeds["x"], feeds["v"]
        assert image.dtype == np.float32 and image.shape == (256, 3, 16, 16) and vector.shape == (256, 5)
        assert (lag_one(image, 3) > 0.5) == smooth and abs(lag_one(vector, 1)) < 0.15
        assert ("smooth images" in batches.source) == smooth


@pytest.mark.parametrize("kernel, dilation, smooth", [(1, 1, True), (3, 1, True), (3, 2, True), (3, 1, False)])
def test_bn_matched_data_free_inputs_recover_the_input_moments(kernel, dilation, smooth):
    """Running statistics measured by feeding white or smooth images of known per-channel moments through the
    Conv: the solver recovers those moments, smooth images' correlation between taps included (taken as
    independent, the 3x3 solves are 40 % off or have no solution)."""
    rng = np.random.default_rng(kernel + 10 * dilation)
    mean, std = np.array([0.5, -1.0, 2.0]), np.array([1.0, 0.5, 2.0])
    w = rng.standard_normal((6, 3, kernel, kernel)).astype(np.float32)
    bias = rng.standard_normal(6).astype(np.float32)
    shape = (2048, 3, 32, 32)
    noise = smooth_images(rng, shape, (2, 3)) if smooth else rng.standard_normal(shape)
    images = noise * std[:, None, None] + mean[:, None, None]
    b = GraphBuilder()
    conv = b.op("Conv", ["x", b.const(w), b.const(bias)], kernel_shape=[kernel, kernel], dilations=[dilation] * 2)
    seen = run(b.build({"x": ["batch", 3, 32, 32]}, {conv: ["batch", 6, None, None]}), images)
    b = GraphBuilder()
    conv = b.op("Conv", ["x", b.const(w), b.const(bias)], kernel_shape=[kernel, kernel], dilations=[dilation] * 2)
    bn = b.op("BatchNormalization", [conv, b.const(np.ones(6, np.float32)), b.const(np.zeros(6, np.float32)),
                                     b.const(seen.mean(axis=(0, 2, 3)).astype(np.float32)),
                                     b.const(seen.var(axis=(0, 2, 3)).astype(np.float32))])
    model = load(b.build({"x": ["batch", 3, 32, 32]}, [b.head(b.op("Relu", [bn]), 6)]))
    name, solved_mean, solved_std = bn_matched_moments(model, runtime.input_specs(model), "NCHW" if smooth else None)
    assert name == "x"
    np.testing.assert_allclose(solved_mean, mean, atol=0.03)
    np.testing.assert_allclose(solved_std, std, rtol=0.04)
    (feeds,) = list(synthetic_batches(model, 2048, 2048, match_bn=True, smooth=smooth))  # a smooth image's mean varies
    np.testing.assert_allclose(feeds["x"].mean(axis=(0, 2, 3)), solved_mean, atol=0.03)
    np.testing.assert_allclose(feeds["x"].std(axis=(0, 2, 3)), solved_std, rtol=0.02)
    with pytest.raises(GraphpruneError, match="match-bn"):
        list(synthetic_batches(conv_model(["batch", 3, 8, 8]), 4, 4, match_bn=True))
    with pytest.raises(GraphpruneError, match="reads NCHW; --image-layout NHWC contradicts it"):
        synthetic_batches(model, 4, 4, match_bn=True, smooth=smooth, image=ImageSpec(layout="NHWC"))


def run(model, images: np.ndarray) -> np.ndarray:
    return runtime.session(load(model)).run(None, {"x": images.astype(np.float32)})[0].astype(np.float64)


def test_data_free_images_take_the_image_size_where_the_model_leaves_it_open():
    """Symbolic spatial axes of an image input are sized by the image spec (not left at 1: a network
    calibrated on 1x1 images learns nothing of real ones), and the source says so; static ones stay."""
    cases = ((["batch", 3, "h", "w"], (2, 3, 48, 320), True), (["batch", 3, 8, 8], (2, 3, 8, 8), False))
    for dims, expected, said in cases:
        batches = synthetic_batches(conv_model(dims), 2, 2, image=ImageSpec(size=(48, 320)))
        (feeds,) = list(batches)
        assert feeds["x"].shape == expected and ("48x320 images" in batches.source) == said
