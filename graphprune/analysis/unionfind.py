"""Vectorised union-find over integer elements (channel indices of every tensor axis)."""

from __future__ import annotations

import numpy as np


class UnionFind:
    """Disjoint sets over a growable range of integer elements (storage grows by doubling: adding n elements
    one axis at a time costs O(n) overall, not O(n²))."""

    def __init__(self) -> None:
        self._storage = np.zeros(1024, dtype=np.int64)
        self._size = 0

    def __len__(self) -> int:
        return self._size

    @property
    def _parent(self) -> np.ndarray:
        return self._storage[: self._size]

    def add(self, count: int) -> int:
        """Append `count` singleton elements; return the id of the first."""
        base = self._size
        if base + count > len(self._storage):
            grown = np.zeros(max(2 * len(self._storage), base + count), dtype=np.int64)
            grown[:base] = self._storage[:base]
            self._storage = grown
        self._storage[base:base + count] = np.arange(base, base + count, dtype=np.int64)
        self._size = base + count
        return base

    def find(self, elements: np.ndarray) -> np.ndarray:
        """Roots of `elements`, compressing paths by pointer jumping."""
        parent = self._parent
        roots = parent[elements]
        while True:
            grand = parent[roots]
            if np.array_equal(grand, roots):
                break
            roots = grand
        parent[elements] = roots
        return roots

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        """Merge the sets of a[i] and b[i] for every i."""
        a = np.asarray(a, dtype=np.int64)
        b = np.asarray(b, dtype=np.int64)
        while True:
            ra, rb = self.find(a), self.find(b)
            differ = ra != rb
            if not differ.any():
                return
            lo = np.minimum(ra[differ], rb[differ])
            hi = np.maximum(ra[differ], rb[differ])
            self._parent[hi] = lo

    def roots(self) -> np.ndarray:
        """Root of every element."""
        return self.find(np.arange(self._size))
