"""FAISS indexes over standardised, L2-normalised profiles (cosine) and over features.

Index ids are sample_ids. Kinds (``INDEX_KINDS``; ``auto``, the default, chooses by size):

- ``flat``: exact ``IndexFlatIP``, 4 bytes per unit and sample, written as a stream
  (``write_flat_index``) and searched memory-mapped block by block (``scan_flat``).
- ``ivf-sq8``: the approximate kind ``auto`` picks once a flat index of the rows would exceed
  ``AUTO_FLAT_MAX_BYTES`` (8 GiB: 50,000 x 26,560 = 5.3 GB stays exact). ``IndexIVFScalarQuantizer``
  over the residuals to the list centroids, one byte per unit (``QT_8bit_uniform``), so a quarter of
  flat: 4.8 GB at 1,000,000 x 4,800, which a build holds once in memory (the codes) and a reader maps
  (``IO_FLAG_MMAP_IFC`` maps FAISS 1.15's array inverted lists: a query touches only the lists it
  probes). Why this kind: measured on the scale benchmark's clustered profiles (50,000 x 4,800),
  8-bit codes rank the top 10 alone at recall@10 0.946-0.953 (neighbours' similarities there differ
  by ~5e-4), while its 20 best candidates re-ranked by the exact profiles reach 0.999 (200,000 x 4,800,
  nprobe 8; each candidate costs a row group read from the Parquet parts, so no more are taken); IVF-PQ
  codes are 20x smaller but need many more candidates re-read, and IVF-Flat is as large as flat.
  A single query (``neighbors``) therefore re-ranks ``rerank_candidates`` of them exactly; the
  dataset-wide graph (``mistakes``) ranks by the 8-bit similarities, its recall stated apart.
- ``ivf`` (IndexIVFFlat) and ``ivfpq`` (IndexIVFPQ, about one byte per 20 dimensions, re-ranked
  exactly by ``neighbors``): as asked.

Every IVF kind trains on an evenly strided sample of about ``TRAIN_BYTES`` of rows (``train_rows_for``),
and its recall@10 against exact search is measured after each build on a fixed-seed sample of stored
rows (``RecallProbe``: the exact answers by a streaming scan, one chunk in memory); an ivf-sq8 index's
``nprobe`` is the smallest power of two whose recall on a separate tuning sample reaches ``NPROBE_TARGET``
(ivf and ivfpq keep their fixed share of the lists).
``to_search_device`` moves an index to the GPUs when FAISS sees any (used for the batched neighbour
graph; filtered single queries stay on the CPU, since GPU indexes take no ID selectors).
"""

from __future__ import annotations

import contextlib
import math
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import faiss
import numpy as np

from ..errors import DatabaseError

INDEX_KINDS = ("flat", "ivf", "ivfpq", "ivf-sq8")
ASKED_KINDS = ("auto",) + INDEX_KINDS  # what --index takes: auto resolves to a kind by size (``resolve_kind``)
APPROXIMATE_KIND = "ivf-sq8"  # what ``auto`` builds above AUTO_FLAT_MAX_BYTES
AUTO_FLAT_MAX_BYTES = 8 << 30  # ``auto``: exact flat while a flat index of the rows is at most this
TRAIN_BYTES = 256 << 20  # float32 rows an IVF kind trains on (at least what the kind needs: ``min_train_rows``)
SQ_ROWS_PER_LIST = 8  # ivf-sq8: at least this many training rows per inverted list
NPROBE_TARGET = 0.99  # nprobe: the smallest power of two whose re-ranked recall@10 on the tuning sample reaches this
RECALL_QUERIES, RECALL_K, RECALL_SEED = 200, 10, 0  # the fixed-seed sample recall@10 is measured on
PQ_BITS = 8  # bits per sub-quantiser code: 256 centroids each
PQ_MIN_DIMS = 8  # dimensions per sub-quantiser, at least (fewer: too many codes per vector)
PQ_MAX_CODES = 256
POINTS_PER_CENTROID = 39  # FAISS's advice for k-means training: fewer rows, and a PQ index falls back to flat
SPACES = ("saliency", "feature")


def resolve_kind(kind: str, rows: int, dim: int, flat_max_bytes: int | None = None) -> str:
    """The kind to build for an asked ``kind``: ``auto`` is flat while ``rows`` x ``dim`` float32 vectors
    take at most ``flat_max_bytes`` (AUTO_FLAT_MAX_BYTES), else APPROXIMATE_KIND; any other kind as asked."""
    if kind not in ASKED_KINDS:
        raise DatabaseError(f"unknown index kind '{kind}'; use one of {', '.join(ASKED_KINDS)}")
    if kind != "auto":
        return kind
    limit = AUTO_FLAT_MAX_BYTES if flat_max_bytes is None else flat_max_bytes
    return "flat" if 4 * rows * dim <= limit else APPROXIMATE_KIND


def train_rows_for(dim: int) -> int:
    """Rows of ``dim`` float32 values in TRAIN_BYTES (at least one)."""
    return max(1, TRAIN_BYTES // max(1, 4 * dim))


def new_index(dim: int, kind: str = "flat", n_expected: int = 0) -> faiss.Index:
    if kind == "flat":
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    if kind == APPROXIMATE_KIND:
        nlist = max(1, min(65536, int(4 * math.sqrt(max(n_expected, 1))), train_rows_for(dim) // SQ_ROWS_PER_LIST))
        index = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(dim), dim, nlist, faiss.ScalarQuantizer.QT_8bit_uniform,
                                              faiss.METRIC_INNER_PRODUCT, True)
        index.cp.min_points_per_centroid = 1  # the row count is checked before training, quietly
        index.nprobe = min(nlist, 16)  # until ``tune_nprobe`` measures it
        return index
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


def rerank_candidates(kind: str, want: int) -> int:
    """Candidates a single query takes from an index of ``kind`` to re-rank by the exact profiles (``want``:
    no re-ranking; the similarities of ivf and flat are exact already)."""
    if kind == "ivfpq":
        return max(10 * want, 100)
    if kind == APPROXIMATE_KIND:
        return max(2 * want, 20)
    return want


def min_train_rows(index: faiss.Index) -> int:
    """Rows needed to train ``index``: one per IVF list; for PQ, POINTS_PER_CENTROID per code centroid."""
    pq = getattr(index, "pq", None)
    return max(index.nlist, POINTS_PER_CENTROID * (1 << pq.nbits) if pq is not None else 0)


def build_index(
    dim: int, chunks: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]], kind: str = "flat", n_expected: int = 0,
    train_rows: int | None = None, base: faiss.Index | None = None,
) -> faiss.Index:
    """An index over ``chunks()`` (ids, vectors already normalised), or ``base`` extended with them.
    IVF is trained on a first sample of the chunks: ``train_rows`` (default: TRAIN_BYTES of rows, at
    least what the kind needs)."""
    index = base if base is not None else new_index(dim, kind, n_expected)
    if train_rows is None:
        train_rows = max(train_rows_for(dim), min_train_rows(index) if not index.is_trained else 0)
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
    """The kind of a built index: 'ivf-sq8', 'ivfpq', 'ivf' or 'flat' (a requested kind may fall back to flat)."""
    ivf = faiss.try_extract_index_ivf(faiss.index_gpu_to_cpu(index) if _on_gpu(index) else index)
    if ivf is None:
        return "flat"
    ivf = faiss.downcast_index(ivf)
    if isinstance(ivf, faiss.IndexIVFScalarQuantizer):
        return APPROXIMATE_KIND
    return "ivfpq" if isinstance(ivf, faiss.IndexIVFPQ) else "ivf"


@dataclass
class Recall:
    """recall@10 of an approximate index against exact search, on ``queries`` stored rows (each its own query,
    itself left out of both answers): ``recall_at_10`` of single queries (the top ``rerank`` candidates of the
    index at ``nprobe``, re-ranked exactly: the share of the exact 10 among them), ``graph_recall_at_10`` of
    the index's own top 10 (what the dataset-wide graph uses)."""

    recall_at_10: float
    graph_recall_at_10: float
    queries: int
    nprobe: int | None
    rerank: int


def probe_positions(n: int, queries: int = RECALL_QUERIES, seed: int = RECALL_SEED) -> tuple[np.ndarray, np.ndarray]:
    """(measured, tuning): positions, in committed order, of the rows recall@10 is measured on and of the
    disjoint rows nprobe is tuned on (the measured ones again when there are too few rows), each sorted."""
    order = np.random.default_rng(seed).permutation(n)
    measured, tuning = order[:queries], order[queries:2 * queries]
    return np.sort(measured), np.sort(tuning if len(tuning) >= min(queries, 50) else measured)


class RecallProbe:
    """The exact 10 nearest neighbours of a fixed-seed sample of stored rows (``probe_positions``), found by
    streaming every row past them once: ``collect`` on a first pass picks the sample's vectors, ``scan`` on a
    second pass keeps each one's best k (one chunk and (queries, k) arrays in memory)."""

    def __init__(self, n: int, k: int = RECALL_K):
        self.n, self.k = n, k
        self.measured, self.tuning = probe_positions(n)
        self.positions = np.union1d(self.measured, self.tuning)
        self._vectors, self._ids, self._seen = [], [], 0

    def collect(self, ids: np.ndarray, rows: np.ndarray) -> None:
        lo = np.searchsorted(self.positions, self._seen)
        hi = np.searchsorted(self.positions, self._seen + len(ids))
        local = self.positions[lo:hi] - self._seen
        self._vectors.append(np.array(rows[local], dtype=np.float32))
        self._ids.append(np.asarray(ids)[local].astype(np.int64))
        self._seen += len(ids)

    def start_scan(self) -> None:
        if self._seen != self.n:
            raise ValueError(f"the recall sample was drawn from {self.n} rows, the chunks held {self._seen}")
        self.queries = np.concatenate(self._vectors) if self._vectors else np.zeros((0, 0), np.float32)
        self.query_ids = np.concatenate(self._ids) if self._ids else np.zeros(0, np.int64)
        self.best_s = np.full((len(self.query_ids), self.k), -np.inf, dtype=np.float32)
        self.best_i = np.full((len(self.query_ids), self.k), -1, dtype=np.int64)

    def scan(self, ids: np.ndarray, rows: np.ndarray) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        sims = self.queries @ np.ascontiguousarray(rows, dtype=np.float32).T
        sims[self.query_ids[:, None] == ids[None, :]] = -np.inf  # a row is never its own neighbour
        cand_s = np.concatenate([self.best_s, sims], axis=1)
        cand_i = np.concatenate([self.best_i, np.broadcast_to(ids, sims.shape)], axis=1)
        top = np.argsort(-cand_s, axis=1, kind="stable")[:, :self.k]
        self.best_s, self.best_i = np.take_along_axis(cand_s, top, 1), np.take_along_axis(cand_i, top, 1)

    def recall(self, index: faiss.Index, which: np.ndarray, candidates: int) -> float:
        """The mean share of each sampled row's exact k neighbours among the first ``candidates`` answers of
        ``index`` (the row itself left out), over the rows at positions ``which``."""
        rows = np.searchsorted(self.positions, which)
        if len(rows) == 0:
            return float("nan")
        _, found = index.search(self.queries[rows], candidates + 1)
        hits = []
        for r, got in zip(rows, found):
            got = [i for i in got.tolist() if i >= 0 and i != self.query_ids[r]][:candidates]
            hits.append(len(set(got) & set(self.best_i[r].tolist())) / self.k)
        return float(np.mean(hits))

    def result(self, index: faiss.Index, kind: str) -> Recall:
        ivf = faiss.try_extract_index_ivf(index)
        rerank = rerank_candidates(kind, self.k)
        return Recall(recall_at_10=round(self.recall(index, self.measured, rerank), 4),
                      graph_recall_at_10=round(self.recall(index, self.measured, self.k), 4),
                      queries=int(len(self.measured)), nprobe=int(ivf.nprobe) if ivf is not None else None, rerank=rerank)


def tune_nprobe(index: faiss.Index, probe: RecallProbe, kind: str) -> int:
    """Set and return the smallest power-of-two nprobe whose re-ranked recall@10 on the tuning rows reaches NPROBE_TARGET."""
    ivf = faiss.extract_index_ivf(index)
    nprobe = 1
    while True:
        ivf.nprobe = min(nprobe, ivf.nlist)
        if ivf.nprobe == ivf.nlist or probe.recall(index, probe.tuning, rerank_candidates(kind, probe.k)) >= NPROBE_TARGET:
            return int(ivf.nprobe)
        nprobe *= 2


def build_approximate(dim: int, kind: str, n: int, chunks: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]],
                      base: faiss.Index | None = None, new_from: int | None = None,
                      advance: Callable[[int], None] = lambda n: None,
                      base_mapped: bool = False) -> tuple[faiss.Index | None, Recall | None]:
    """An IVF index of ``kind`` over the ``n`` rows of ``chunks()`` (ids, normalised vectors, every committed row in
    committed order), or ``base`` (``base_mapped``: read memory-mapped) extended with the rows whose id is at least
    ``new_from``; and its ``Recall``. Two passes: the recall sample and an evenly strided training sample (about
    TRAIN_BYTES), then the codes encoded to a scratch file and the sample's exact neighbours scanned; the lists are
    then filled once at their final sizes (``_fill_lists``), so memory holds the codes once, not the rows. (None, None): too few rows to train the kind."""
    probe = RecallProbe(n)
    index = base if base is not None else new_index(dim, kind, n)
    want = max(train_rows_for(dim), min_train_rows(index))
    step, seen, sample = max(1, n // want), 0, []
    for ids, rows in chunks():
        probe.collect(ids, rows)
        if not index.is_trained:
            sample.append(np.array(rows[(-seen) % step::step], dtype=np.float32))
        seen += len(ids)
        advance(len(ids))
    if not index.is_trained:
        train = np.concatenate(sample)[:want] if sample else np.zeros((0, dim), np.float32)
        sample.clear()
        if len(train) < min_train_rows(index):
            return None, None
        index.train(train)
        del train
    probe.start_scan()
    with tempfile.TemporaryDirectory(prefix="saliencydb-codes-") as tmp:
        added, counts = _encode_to_scratch(index, Path(tmp) / "codes", chunks, probe, new_from, advance)
        import pyarrow as pa

        pa.default_memory_pool().release_unused()  # the passes' decoded batches: not kept beside the codes
        _fill_lists(index, added, counts, base_mapped)
        del added
    if kind == APPROXIMATE_KIND:
        tune_nprobe(index, probe, kind)
    return index, probe.result(index, kind)


FILL_BLOCK_BYTES = 16 << 20  # scratch records moved into the inverted lists per block (a few copies of it at once)


def _encode_to_scratch(index: faiss.Index, path: Path, chunks, probe: RecallProbe, new_from: int | None,
                       advance: Callable[[int], None]) -> tuple[np.ndarray, np.ndarray]:
    """The second pass of ``build_approximate``: each chunk scanned by the recall probe, and its rows (those with
    an id of at least ``new_from``) assigned to their lists and encoded, appended to a scratch file outside any
    database as (list, id, code) records; (the records mapped read-only, the count of each list)."""
    ivf = faiss.extract_index_ivf(index)
    record = np.dtype([("list", "<i8"), ("id", "<i8"), ("code", "u1", (ivf.code_size,))])
    written, counts = 0, np.zeros(ivf.nlist, np.int64)
    with open(path, "wb") as f:
        for ids, rows in chunks():
            probe.scan(ids, rows)
            new = np.ones(len(ids), bool) if new_from is None else np.asarray(ids) >= new_from
            x = np.ascontiguousarray(rows[new], dtype=np.float32)
            if len(x):
                out = np.empty(len(x), dtype=record)
                out["list"] = ivf.quantizer.assign(x, 1).ravel()
                out["id"] = np.asarray(ids)[new]
                codes = np.empty((len(x), ivf.code_size), np.uint8)
                lists = np.ascontiguousarray(out["list"])
                ivf.encode_vectors(len(x), faiss.swig_ptr(x), faiss.swig_ptr(lists), faiss.swig_ptr(codes), False)
                out["code"] = codes
                counts += np.bincount(lists, minlength=ivf.nlist)
                f.write(memoryview(out).cast("B"))
                written += len(x)
            advance(len(ids))
    added = np.memmap(path, dtype=record, mode="r", shape=(written,)) if written else np.zeros(0, dtype=record)
    return added, counts


def _fill_lists(index: faiss.Index, added: np.ndarray, counts: np.ndarray, mapped: bool = False) -> None:
    """Replace the index's inverted lists by lists allocated once at their final sizes: its own entries (``mapped``:
    read memory-mapped, each list's pages handed back once copied), then the ``added`` records, block by block. Adding
    row by row instead grows each list by doubling: up to twice the codes in memory."""
    ivf = faiss.extract_index_ivf(index)
    old = ivf.invlists
    fresh = faiss.ArrayInvertedLists(ivf.nlist, ivf.code_size)
    offsets = np.zeros(ivf.nlist, np.int64)
    for lst in range(ivf.nlist):
        have = old.list_size(lst)
        fresh.resize(lst, int(have + counts[lst]))
        if have:
            fresh.update_entries(lst, 0, have, old.get_ids(lst), old.get_codes(lst))
            if mapped:  # only a read-only file mapping: its pages are read back from the file if touched again
                release_pages(faiss.rev_swig_ptr(old.get_codes(lst), have * ivf.code_size))
        offsets[lst] = have
    block = max(1, FILL_BLOCK_BYTES // added.dtype.itemsize)
    for start in range(0, len(added), block):
        part = np.array(added[start:start + block])
        if isinstance(added, np.memmap):  # the scratch file's pages: not kept resident beside the lists they fill
            release_pages(added[start:start + block])
        order = np.argsort(part["list"], kind="stable")
        part = part[order]
        bounds = np.flatnonzero(np.diff(part["list"])) + 1
        for group in np.split(part, bounds):
            lst, n = int(group["list"][0]), len(group)
            ids, codes = np.ascontiguousarray(group["id"]), np.ascontiguousarray(group["code"])
            fresh.update_entries(lst, int(offsets[lst]), n, faiss.swig_ptr(ids), faiss.swig_ptr(codes))
            offsets[lst] += n
    ivf.replace_invlists(fresh, True)
    fresh.this.disown()  # the index owns it now
    ivf.ntotal = int(offsets.sum())
    if index is not ivf:
        index.ntotal = ivf.ntotal


def to_search_device(index: faiss.Index) -> faiss.Index:
    """The index on all GPUs when FAISS sees any, else unchanged."""
    if faiss.get_num_gpus() > 0:
        return faiss.index_cpu_to_all_gpus(index)
    return index


def _on_gpu(index: faiss.Index) -> bool:
    return "Gpu" in type(index).__name__


SCAN_BLOCK_BYTES = 64 << 20  # vectors scanned per block by ``scan_flat``: the most of a mapped index resident at once


def flat_part(index: faiss.Index):
    """The ``IndexFlat`` holding the vectors of a flat index (an ``IndexIDMap`` over one), else None."""
    inner = faiss.downcast_index(index.index) if hasattr(index, "id_map") else index
    return inner if isinstance(inner, faiss.IndexFlat) else None


def mapped_vectors(index: faiss.Index) -> tuple[np.ndarray, np.ndarray]:
    """(vectors, ids) of a flat index: its stored rows as a (ntotal, d) float32 view (no copy; of the
    file's mapping when it was read memory-mapped) and the sample id of each row."""
    flat = flat_part(index)
    n, d = index.ntotal, index.d
    ids = faiss.vector_to_array(index.id_map) if hasattr(index, "id_map") else np.arange(n, dtype=np.int64)
    xb = faiss.rev_swig_ptr(flat.get_xb(), n * d).reshape(n, d) if n else np.zeros((0, d), np.float32)
    return xb, ids


def scan_flat(index: faiss.Index, vectors: np.ndarray, k: int, candidates: np.ndarray | None = None,
              release: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``index.search(vectors, k)`` of a flat inner-product index (among ``candidates`` ids when given),
    scanned in blocks of SCAN_BLOCK_BYTES with FAISS's own kernel, so the similarities, ids and the
    order of ties are those of ``index.search``. ``release``: the index was read memory-mapped
    (``IO_FLAG_MMAP_IFC``); each scanned block's pages are handed back (madvise DONTNEED: they
    stay in the page cache), so the resident memory stays about one block however large the index."""
    xb, ids = mapped_vectors(index)
    n, d = xb.shape
    q = np.ascontiguousarray(vectors, dtype=np.float32)
    keep = None if candidates is None else np.isin(ids, np.asarray(candidates, dtype=np.int64))
    block = max(4, (SCAN_BLOCK_BYTES // max(1, 4 * d)) // 4 * 4)  # a multiple of 4: FAISS's kernel groups 4 rows
    found_s, found_p = [], []
    for start in range(0, n, block):
        rows = xb[start:start + block]
        sel = None
        if keep is not None:
            local = np.flatnonzero(keep[start:start + block]).astype(np.int64)
            if len(local) == 0:
                continue
            sel = faiss.IDSelectorBatch(local)
        s, p = _knn_block(q, rows, min(k, len(rows)), sel)
        found_s.append(s)
        found_p.append(np.where(p >= 0, p + start, -1))
        if release:
            release_pages(rows)
    return _merge(found_s, found_p, ids, len(q), k)


def _knn_block(q: np.ndarray, rows: np.ndarray, k: int, sel) -> tuple[np.ndarray, np.ndarray]:
    sims = np.empty((len(q), k), dtype=np.float32)
    pos = np.empty((len(q), k), dtype=np.int64)
    faiss.knn_inner_product(faiss.swig_ptr(q), faiss.swig_ptr(rows), q.shape[1], len(q), len(rows), k,
                            faiss.swig_ptr(sims), faiss.swig_ptr(pos), sel)
    return sims, pos


def _merge(found_s: list, found_p: list, ids: np.ndarray, nq: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best of the blocks' answers, as FAISS's heap gives them: the highest similarities,
    among equal ones the earliest stored; listed best first, equal ones latest stored first."""
    sims = np.full((nq, k), -np.finfo(np.float32).max, dtype=np.float32)  # FAISS pads short rows so
    out = np.full((nq, k), -1, dtype=np.int64)
    if not found_s:
        return sims, out
    s_all, p_all = np.concatenate(found_s, axis=1), np.concatenate(found_p, axis=1)
    for r in range(nq):
        ok = p_all[r] >= 0
        s, p = s_all[r][ok], p_all[r][ok]
        chosen = np.lexsort((p, -s))[:k]  # best first; a tie goes to the earlier position
        s, p = s[chosen], p[chosen]
        order = np.lexsort((-p, -s))  # FAISS lists equal similarities latest position first
        sims[r, :len(order)], out[r, :len(order)] = s[order], ids[p[order]]
    return sims, out


@contextlib.contextmanager
def scratch_rows(dim: int, chunks: Iterator[tuple[np.ndarray, np.ndarray]]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(rows, ids): the float32 vectors of ``chunks`` (ids, rows) written one chunk at a time to a scratch
    file in the system's temporary directory (never in a database), mapped read-only as a (n, dim)
    array; the file is removed on exit. Memory holds one chunk, and the pages a reader releases (``release_pages``)."""
    with tempfile.TemporaryDirectory(prefix="saliencydb-vectors-") as tmp:
        path = Path(tmp) / "vectors.f32"
        ids = []
        with open(path, "wb") as f:
            for chunk_ids, rows in chunks:
                f.write(memoryview(np.ascontiguousarray(rows, dtype=np.float32)).cast("B"))
                ids.append(np.asarray(chunk_ids, dtype=np.int64))
        all_ids = np.concatenate(ids) if ids else np.zeros(0, np.int64)
        rows = (np.memmap(path, dtype=np.float32, mode="r", shape=(len(all_ids), dim)) if len(all_ids)
                else np.zeros((0, dim), np.float32))
        try:
            yield rows, all_ids
        finally:
            del rows


def release_pages(rows: np.ndarray) -> None:
    """Drop the pages under ``rows`` (a view of a read-only file mapping) from this process's resident set."""
    import ctypes
    import mmap

    page = mmap.PAGESIZE
    start = rows.ctypes.data // page * page
    end = (rows.ctypes.data + rows.nbytes) // page * page  # the last partial page is shared with the next block
    if end > start:
        _libc().madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), mmap.MADV_DONTNEED)


def _libc():
    import ctypes
    import ctypes.util

    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    return _LIBC


_LIBC = None


# -- the flat index file, written as a stream ------------------------------------------------
# FAISS's own serialisation of IndexIDMap2(IndexFlatIP) (faiss/impl/index_write.cpp), which
# ``faiss.read_index`` reads back: "IxM2" + header, "IxFI" + header, the vectors (a u64 count of
# floats, then the float32 rows), the ids (a u64 count, then int64s). A header is
# d (i32), ntotal (i64), two unused i64 (1 << 20), is_trained (u8), metric (i32; 0: inner product).
_HEADER = struct.Struct("<4siqqq?i")
_COUNT = struct.Struct("<Q")
_XB_OFFSET = 2 * _HEADER.size + _COUNT.size
WRITE_BLOCK_BYTES = 64 << 20  # copied per read when extending a flat index file


def _headers(dim: int, n: int) -> bytes:
    return (_HEADER.pack(b"IxM2", dim, n, 1 << 20, 1 << 20, True, faiss.METRIC_INNER_PRODUCT)
            + _HEADER.pack(b"IxFI", dim, n, 1 << 20, 1 << 20, True, faiss.METRIC_INNER_PRODUCT)
            + _COUNT.pack(n * dim))


def flat_file_layout(path) -> tuple[int, int] | None:
    """(dim, ntotal) of a flat inner-product index file as ``write_flat_index`` (and FAISS) writes it,
    its size consistent with them; None for any other file (another kind, or not an index)."""
    try:
        with open(path, "rb") as f:
            head = f.read(_XB_OFFSET)
            size = os.fstat(f.fileno()).st_size
    except OSError:
        return None
    if len(head) != _XB_OFFSET:
        return None
    outer, inner = _HEADER.unpack_from(head, 0), _HEADER.unpack_from(head, _HEADER.size)
    (count,) = _COUNT.unpack_from(head, 2 * _HEADER.size)
    dim, n = outer[1], outer[2]
    if (outer[0], inner[0]) != (b"IxM2", b"IxFI") or outer[5] != inner[5] != faiss.METRIC_INNER_PRODUCT:
        return None
    if inner[1:3] != (dim, n) or count != n * dim or size != _XB_OFFSET + 4 * n * dim + _COUNT.size + 8 * n:
        return None
    return dim, n


def write_flat_index(path, dim: int, chunks: Iterator[tuple[np.ndarray, np.ndarray]], base=None) -> int:
    """Write the exact flat index of ``chunks`` (ids, vectors already normalised) to ``path`` as a
    stream, byte for byte the file ``faiss.write_index`` writes for ``build_index(..., "flat")``, so
    memory holds one chunk however many vectors there are (``build_index`` holds them all). ``base``:
    a flat index file (``flat_file_layout``) whose vectors come first. Returns the vectors written."""
    ids_parts = []
    with open(path, "wb") as out:
        out.write(_headers(dim, 0))
        if base is not None:
            ids_parts.append(_copy_base(base, dim, out))
        for ids, rows in chunks:
            rows = np.ascontiguousarray(rows, dtype=np.float32)
            if rows.ndim != 2 or rows.shape[1] != dim or len(rows) != len(ids):
                raise ValueError(f"a chunk of {rows.shape} vectors for {len(ids)} ids; the index has {dim} dimensions")
            out.write(memoryview(rows).cast("B"))
            ids_parts.append(np.asarray(ids, dtype=np.int64))
        ids = np.concatenate(ids_parts) if ids_parts else np.zeros(0, np.int64)
        out.write(_COUNT.pack(len(ids)))
        out.write(memoryview(np.ascontiguousarray(ids)).cast("B"))
        out.seek(0)
        out.write(_headers(dim, len(ids)))
    return int(len(ids))


def _copy_base(base, dim: int, out) -> np.ndarray:
    """Append the vectors of the flat index file ``base`` to ``out``, block by block; its ids."""
    layout = flat_file_layout(base)
    if layout is None or layout[0] != dim:
        raise ValueError(f"'{base}' is not a flat index file of {dim} dimensions")
    n = layout[1]
    with open(base, "rb") as f:
        f.seek(_XB_OFFSET)
        left = 4 * n * dim
        while left:
            block = f.read(min(left, WRITE_BLOCK_BYTES))
            if not block:
                raise ValueError(f"'{base}' ends before its vectors do")
            out.write(block)
            left -= len(block)
        f.seek(_COUNT.size, os.SEEK_CUR)
        return np.frombuffer(f.read(8 * n), dtype=np.int64)
