"""Streaming mean and standard deviation per unit (Welford / Chan merge, float64)."""

from __future__ import annotations

import numpy as np

STD_FLOOR = 1e-14


class RunningStats:
    """Mean and sample standard deviation (ddof=1) of a stream of row vectors.

    Batches are merged with Chan et al.'s parallel formula, so the result does not
    depend on how the stream is cut into batches, and two ``RunningStats`` (from two
    processes, say) merge exactly like one that saw both streams.
    """

    def __init__(self, dim: int):
        self.dim = dim
        self.count = 0
        self.mean = np.zeros(dim, dtype=np.float64)
        self.m2 = np.zeros(dim, dtype=np.float64)

    def update(self, rows: np.ndarray) -> "RunningStats":
        rows = np.asarray(rows, dtype=np.float64).reshape(-1, self.dim)
        n = rows.shape[0]
        if n == 0:
            return self
        mean = rows.mean(axis=0)
        m2 = ((rows - mean) ** 2).sum(axis=0)
        return self._merge(n, mean, m2)

    def merge(self, other: "RunningStats") -> "RunningStats":
        if other.dim != self.dim:
            raise ValueError(f"cannot merge statistics of {other.dim} units into {self.dim}")
        return self._merge(other.count, other.mean, other.m2)

    def _merge(self, n: int, mean: np.ndarray, m2: np.ndarray) -> "RunningStats":
        if n == 0:
            return self
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta**2 * (self.count * n / total)
        self.count = total
        return self

    @property
    def std(self) -> np.ndarray:
        """Sample standard deviation (ddof=1); 1 where it is <= 1e-14 or undefined (count < 2)."""
        if self.count < 2:
            return np.ones(self.dim)
        std = np.sqrt(np.maximum(self.m2, 0.0) / (self.count - 1))
        return np.where(std <= STD_FLOOR, 1.0, std)

    def moments(self) -> np.ndarray:
        """(count, mean, m2) packed in one float64 array, for an all-reduce across processes."""
        return np.concatenate([[float(self.count)], self.mean, self.m2])

    @classmethod
    def from_moments(cls, packed: np.ndarray) -> "RunningStats":
        dim = (len(packed) - 1) // 2
        s = cls(dim)
        s.count = int(round(packed[0]))
        s.mean = np.array(packed[1 : dim + 1], dtype=np.float64)
        s.m2 = np.array(packed[dim + 1 :], dtype=np.float64)
        return s


def standardize(raw: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """(raw - mean) / std, float32 (std already floored)."""
    return ((np.asarray(raw, dtype=np.float64) - mean) / std).astype(np.float32)


def l2_normalize(rows: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (all-zero rows stay zero), float32; cosine = inner product."""
    rows = np.asarray(rows, dtype=np.float32)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.where(norms > 0, norms, 1.0)
