import pytest

from graphprune.ops.layout import align_blocks


@pytest.mark.parametrize(
    ("src", "dst", "blocks"),
    [
        (["b", 16, 4, 4], ["b", 256], [([0], [0]), ([1, 2, 3], [1])]),           # flatten
        (["b", 16, 1, 1], ["b", 16], [([0], [0]), ([1], [1]), ([2], []), ([3], [])]),
        (["b", 16, 8, 8], ["b", 2, 8, 8, 8], [([0], [0]), ([1], [1, 2]), ([2], [3]), ([3], [4])]),  # split
        ([6, 4], [4, 6], [([0, 1], [0, 1])]),                                     # many-to-many
    ],
)
def test_blocks(src, dst, blocks):
    assert align_blocks(src, dst) == blocks


def test_symbolic_dims_must_match_exactly():
    assert align_blocks(["b", 4], ["n", 4]) is None
    assert align_blocks(["b", 4, None], ["b", 4, 3]) is None


@pytest.mark.parametrize(
    ("src", "dst", "blocks"),
    [
        (["batch", "seq", 32], ["seq*batch", 32], [([0, 1], [0]), ([2], [1])]),  # tokens flattened (dynamo)
        (["seq*batch", 10], ["batch", "seq", 10], [([0], [0, 1]), ([1], [2])]),
        (["b", 8, 4], ["b*2", 16], [([0, 1, 2], [0, 1])]),                     # only the whole product is provable
    ],
)
def test_symbolic_products_match_as_multisets(src, dst, blocks):
    assert align_blocks(src, dst) == blocks


def test_symbolic_products_must_be_equal():
    assert align_blocks(["batch", "seq", 4], ["batch*len", 4]) is None
    assert align_blocks(["batch", 4], ["batch+1", 4]) is None
