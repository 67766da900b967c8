"""FAISS indexes over standardised, L2-normalised profiles (cosine) and over features.

Index ids are sample_ids. Exact ``IndexFlatIP`` by default; ``ivf`` (IndexIVFFlat,
inner product) for large databases; ``ivfpq`` (IndexIVFPQ: product-quantised codes of about
one byte per 20 dimensions, approximate similarities) for millions of samples. ``to_search_device`` moves an index to the GPUs
when FAISS sees any (used for the batched neighbour graph; filtered single queries stay
on the CPU, since GPU indexes take no ID selectors).
"""

from __future__ import annotations

import math
from typing import Callable, Iterator

import faiss
import numpy as np

from ..errors import DatabaseError

INDEX_KINDS = ("flat", "ivf", "ivfpq")
PQ_BITS = 8  # bits per sub-quantiser code: 256 centroids each
PQ_MIN_DIMS = 8  # dimensions per sub-quantiser, at least (fewer: too many codes per vector)
PQ_MAX_CODES = 256
POINTS_PER_CENTROID = 39  # FAISS's advice for k-means training: fewer rows, and a PQ index falls back to flat
SPACES = ("saliency", "feature")


def new_index(dim: int, kind: str = "flat", n_expected: int = 0) -> faiss.Index:
    if kind == "flat":
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    if kind in ("ivf", "ivfpq"):
        nlist = max(1, min(65536, int(4 * math.sqrt(max(n_expected, 1)))))
        quantizer = faiss.IndexFlatIP(dim)
        if kind == "ivf":
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        else:
            index = faiss.IndexIVFPQ(quantizer, dim, nlist, pq_codes(dim), PQ_BITS, faiss.METRIC_INNER_PRODUCT)
            index.pq.cp.min_points_per_centroid = 1  # the row count is checked before training, quietly
        index.cp.min_points_per_centroid = 1
        # PQ codes are cheap to scan: probing more lists lifts recall at no measurable cost
        index.nprobe = max(1, nlist // (4 if kind == "ivfpq" else 8))
        return index
    raise DatabaseError(f"unknown index kind '{kind}'; use one of {', '.join(INDEX_KINDS)}")


def pq_codes(dim: int) -> int:
    """Codes per vector: the largest divisor of ``dim`` that leaves at least PQ_MIN_DIMS dimensions
    to each sub-quantiser, at most PQ_MAX_CODES (4,800 units: 240 one-byte codes, 80x smaller)."""
    return max([m for m in range(1, min(PQ_MAX_CODES, dim) + 1) if dim % m == 0 and dim // m >= PQ_MIN_DIMS] or [1])


def min_train_rows(index: faiss.Index) -> int:
    """Rows needed to train ``index``: one per IVF list; for PQ, POINTS_PER_CENTROID per code centroid."""
    pq = getattr(index, "pq", None)
    return max(index.nlist, POINTS_PER_CENTROID * (1 << pq.nbits) if pq is not None else 0)


def build_index(
    dim: int, chunks: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]], kind: str = "flat", n_expected: int = 0,
    train_rows: int = 100_000, base: faiss.Index | None = None,
) -> faiss.Index:
    """An index over ``chunks()`` (ids, vectors already normalised), or ``base`` extended with them.
    IVF is trained on a first sample of the chunks."""
    index = base if base is not None else new_index(dim, kind, n_expected)
    if not index.is_trained:
        sample, have = [], 0
        for _, rows in chunks():
            sample.append(rows)
            have += len(rows)
            if have >= train_rows:
                break
        train = np.concatenate(sample)[:train_rows] if sample else np.zeros((0, dim), np.float32)
        if len(train) < min_train_rows(index):
            index = new_index(dim, "flat")  # too few rows to train IVF / PQ: exact search is cheap anyway
        else:
            index.train(train)
    for ids, rows in chunks():
        index.add_with_ids(np.ascontiguousarray(rows, dtype=np.float32), ids.astype(np.int64))
    return index


def kind_of(index: faiss.Index) -> str:
    """The kind of a built index: 'ivfpq', 'ivf' or 'flat' (a requested kind may fall back to flat)."""
    ivf = faiss.try_extract_index_ivf(faiss.index_gpu_to_cpu(index) if _on_gpu(index) else index)
    if ivf is None:
        return "flat"
    return "ivfpq" if isinstance(faiss.downcast_index(ivf), faiss.IndexIVFPQ) else "ivf"


def to_search_device(index: faiss.Index) -> faiss.Index:
    """The index on all GPUs when FAISS sees any, else unchanged."""
    if faiss.get_num_gpus() > 0:
        return faiss.index_cpu_to_all_gpus(index)
    return index


def _on_gpu(index: faiss.Index) -> bool:
    return "Gpu" in type(index).__name__
