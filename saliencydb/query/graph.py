"""The exact k-nearest-neighbour graph of many vectors in bounded memory (``mistakes``).

The vectors lie in a file mapped read-only: the committed flat index when it holds this version's
search vectors, else a scratch copy written block by block. The graph of one split is computed
block against block, each pair of blocks once (the similarity matrix of block a against block b
serves the rows of both), so memory holds two blocks of ``GRAPH_BLOCK_BYTES`` and their similarity
matrix, whatever the number of samples, and the work is half of searching every row against every
row. Each block's pages are handed back after use (``storage.indexes.release_pages``): they stay in the
page cache, not in this process's resident memory.

Neighbours are ranked by similarity, ties by the earlier position in the file (committed order), so
the graph does not depend on the block size. A row is never its own neighbour.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from ..storage.indexes import flat_part, mapped_vectors, release_pages, scratch_rows

GRAPH_BLOCK_BYTES = 256 << 20  # vectors per block: two blocks are resident at once
MIN_BLOCK_ROWS, MAX_BLOCK_ROWS = 64, 2048  # at most 2048: a block pair's similarities and their top-k temporaries stay ~100 MiB


@dataclass
class Vectors:
    """A (rows, dim) float32 array mapped from a file, the id of each row, and whether its pages can be released."""
    rows: np.ndarray
    ids: np.ndarray
    mapped: bool = True


def block_rows(dim: int, block_bytes: int | None = None) -> int:
    return int(np.clip((block_bytes or GRAPH_BLOCK_BYTES) // max(1, 4 * dim), MIN_BLOCK_ROWS, MAX_BLOCK_ROWS))


@contextlib.contextmanager
def index_vectors(index) -> Iterator[Vectors]:
    """The vectors of a flat index read memory-mapped (``read_index(mapped=True)``), without a copy."""
    rows, ids = mapped_vectors(index)
    yield Vectors(rows, ids)


@contextlib.contextmanager
def scratch_vectors(dim: int, chunks: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]) -> Iterator[Vectors]:
    """The vectors of ``chunks()`` (ids, rows) in a scratch file mapped read-only (``storage.indexes.scratch_rows``)."""
    with scratch_rows(dim, chunks()) as (rows, ids):
        yield Vectors(rows, ids)


def knn_positions(vectors: Vectors, positions: np.ndarray, k: int, block: int,
                  advance: Callable[[int], None] = lambda n: None) -> tuple[np.ndarray, np.ndarray]:
    """For each row at ``positions`` (sorted), its k most similar rows among ``positions``, itself
    excluded: (similarities, positions), each (len(positions), k), best first."""
    n = len(positions)
    best_s = np.full((n, k), -np.inf, dtype=np.float32)
    best_p = np.full((n, k), np.iinfo(np.int64).max, dtype=np.int64)
    for a in range(0, n, block):
        xa = _gather(vectors, positions[a:a + block])
        for b in range(a, n, block):
            xb = xa if b == a else _gather(vectors, positions[b:b + block])
            sims = xa @ xb.T
            if b == a:
                np.fill_diagonal(sims, -np.inf)
            _merge(best_s, best_p, slice(a, a + len(xa)), sims, positions[b:b + len(xb)], k)
            if b != a:
                _merge(best_s, best_p, slice(b, b + len(xb)), np.ascontiguousarray(sims.T), positions[a:a + len(xa)], k)
        advance(len(xa))
    return best_s, best_p


def _gather(vectors: Vectors, positions: np.ndarray) -> np.ndarray:
    """The rows at ``positions`` (sorted) copied into memory; the mapped pages they span handed back."""
    if len(positions) and positions[-1] - positions[0] + 1 == len(positions):  # a run: one slice, no index array
        rows = np.array(vectors.rows[positions[0]:positions[-1] + 1], dtype=np.float32)
    else:
        rows = np.ascontiguousarray(vectors.rows[positions], dtype=np.float32)
    if vectors.mapped and len(positions):
        release_pages(vectors.rows[positions[0]:positions[-1] + 1])
    return rows


def _merge(best_s: np.ndarray, best_p: np.ndarray, rows: slice, sims: np.ndarray, cols: np.ndarray, k: int) -> None:
    """Fold a block of similarities (its columns at file positions ``cols``) into the running k best of ``rows``."""
    s, p = _top_k(sims, cols, k)
    cand_s = np.concatenate([best_s[rows], s], axis=1)
    cand_p = np.concatenate([best_p[rows], p], axis=1)
    order = np.argsort(cand_p, axis=1, kind="stable")  # ties: the earlier position first
    cand_s, cand_p = np.take_along_axis(cand_s, order, 1), np.take_along_axis(cand_p, order, 1)
    order = np.argsort(-cand_s, axis=1, kind="stable")[:, :k]
    best_s[rows], best_p[rows] = np.take_along_axis(cand_s, order, 1), np.take_along_axis(cand_p, order, 1)


def _top_k(sims: np.ndarray, cols: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the k highest similarities of the block (ties: the leftmost columns) and their positions."""
    width = sims.shape[1]
    if width <= k:
        return sims, np.broadcast_to(cols, sims.shape)
    kth = np.partition(sims, width - k, axis=1)[:, width - k:width - k + 1]
    keep = sims >= kth
    over = np.flatnonzero(keep.sum(axis=1) > k)  # rows whose k-th value is tied beyond k: keep the leftmost
    if len(over):
        sub, th = sims[over], kth[over]
        tied = sub == th
        keep[over] = (sub > th) | (tied & (np.cumsum(tied, axis=1) <= (k - (sub > th).sum(axis=1))[:, None]))
    r, c = np.nonzero(keep)  # row-major: k entries per row, columns ascending
    return sims[r, c].reshape(-1, k), cols[c].reshape(-1, k)


def is_flat(index) -> bool:
    return flat_part(index) is not None
