import numpy as np

from graphprune.analysis.unionfind import UnionFind


def test_union_merges_pairs_and_many_to_one():
    uf = UnionFind()
    a, b = uf.add(4), uf.add(8)
    uf.union(np.array([a, a, a + 1, a + 1]), np.array([b + 3, b, b + 7, b + 1]))  # element a → b, b+3
    roots = uf.roots()
    assert roots[a] == roots[b] == roots[b + 3] and roots[a + 1] == roots[b + 7] == roots[b + 1]
    assert len(set(roots.tolist())) == 12 - 4
    assert roots[a + 2] == a + 2 and roots[a] != roots[a + 1]


def test_union_chain_collapses_to_one_set():
    uf = UnionFind()
    base = uf.add(1000)
    uf.union(base + np.arange(999, 0, -1), base + np.arange(998, -1, -1))
    assert set(uf.roots().tolist()) == {base}


def test_growth_by_many_small_adds_keeps_every_set():
    uf = UnionFind()
    first = uf.add(3)
    uf.union(np.array([first]), np.array([first + 2]))
    bases = [uf.add(700) for _ in range(10)]  # past the initial capacity several times
    uf.union(np.array([first]), np.array([bases[-1] + 5]))
    roots = uf.roots()
    assert len(uf) == len(roots) == 7003
    assert roots[first] == roots[first + 2] == roots[bases[-1] + 5] and roots[first + 1] == first + 1
    assert len(set(roots.tolist())) == 7003 - 2
