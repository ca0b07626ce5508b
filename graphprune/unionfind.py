"""Vectorised union-find over integer elements (channel indices of every tensor axis)."""

from __future__ import annotations

import numpy as np


class UnionFind:
    """Disjoint sets over a growable range of integer elements."""

    def __init__(self) -> None:
        self._parent = np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return len(self._parent)

    def add(self, count: int) -> int:
        """Append `count` singleton elements; return the id of the first."""
        base = len(self._parent)
        self._parent = np.concatenate([self._parent, np.arange(base, base + count, dtype=np.int64)])
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
        return self.find(np.arange(len(self._parent)))
