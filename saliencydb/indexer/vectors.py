"""FAISS indexes over standardised, L2-normalised profiles (cosine) and over features.

Index ids are sample_ids. Exact ``IndexFlatIP`` by default; ``ivf`` (IndexIVFFlat,
inner product) for large databases. ``to_search_device`` moves an index to the GPUs
when FAISS sees any (used for the batched neighbour graph; filtered single queries stay
on the CPU, since GPU indexes take no ID selectors).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Iterator

import faiss
import numpy as np

from ..errors import DatabaseError

INDEX_KINDS = ("flat", "ivf")
SPACES = ("saliency", "feature")


def new_index(dim: int, kind: str = "flat", n_expected: int = 0) -> faiss.Index:
    if kind == "flat":
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    if kind == "ivf":
        nlist = max(1, min(65536, int(4 * math.sqrt(max(n_expected, 1)))))
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.nprobe = max(1, nlist // 8)
        return index
    raise DatabaseError(f"unknown index kind '{kind}'; use one of {', '.join(INDEX_KINDS)}")


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
        if len(train) < index.nlist:
            index = new_index(dim, "flat")  # too few rows to train IVF: exact search is cheap anyway
        else:
            index.train(train)
    for ids, rows in chunks():
        index.add_with_ids(np.ascontiguousarray(rows, dtype=np.float32), ids.astype(np.int64))
    return index


def write_index(index: faiss.Index, path: Path) -> None:
    faiss.write_index(faiss.index_gpu_to_cpu(index) if _on_gpu(index) else index, str(path))


def read_index(path: Path) -> faiss.Index:
    try:
        return faiss.read_index(str(path))
    except RuntimeError as e:
        raise DatabaseError(f"index file '{path}' is unreadable ({str(e).splitlines()[0]}); run `saliencydb restat` to rebuild it") from None


def to_search_device(index: faiss.Index) -> faiss.Index:
    """The index on all GPUs when FAISS sees any, else unchanged."""
    if faiss.get_num_gpus() > 0:
        return faiss.index_cpu_to_all_gpus(index)
    return index


def _on_gpu(index: faiss.Index) -> bool:
    return "Gpu" in type(index).__name__
