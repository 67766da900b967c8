"""The neighbour graph of a whole database and the shared-mistake statistic (appendix A.2).

For every sample, its k nearest neighbours within its own split (itself excluded), in
saliency space and in the feature-space baseline, searched exactly block against block
(``query.graph``), so memory holds two blocks of vectors however many samples there are.
A space whose stored index is approximate (an IVF kind: ``auto`` builds one above
``storage.indexes.AUTO_FLAT_MAX_BYTES``, where the exact graph's n^2 work is out of reach) is
searched in that index instead, a batch of queries at a time; the graph then says it is
approximate, with the index's measured recall@10 (``Graph.approximate``), in the report's note
and in the stored knn parts' metadata (``GRAPH_METADATA``), which ``stored_mistakes`` reads back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import faiss
import numpy as np
import pyarrow as pa

from ..errors import QueryError
from ..progress import NullProgress
from ..schemas import KNN_SCHEMA
from ..storage import batch_rows_for
from ..storage.derived import store_derived
from ..storage.indexes import build_index, to_search_device
from .baselines import baseline_shares
from .graph import block_rows, index_vectors, is_flat, knn_positions, scratch_vectors
from .neighbors import search
from .results import Approximation, Estimate, MistakesReport, SpaceShares, SplitShares

GRAPH_METADATA = b"saliencydb.approximate"  # a knn part's Parquet metadata key: its graph's Approximation (JSON)


@dataclass
class Graph:
    space: str
    ids: np.ndarray  # (n,) query sample ids
    neighbors: np.ndarray  # (n, k) neighbour ids
    similarity: np.ndarray  # (n, k)
    approximate: Approximation | None = None  # searched in an approximate index (None: exact)


def knn_graph(db, space: str, k: int, progress=None) -> Graph:
    """k nearest neighbours of every sample within its split (self excluded), exact.

    Searched block against block over vectors mapped from a file (``query.graph``): the committed
    flat index when it is this version's (current, flat, the database's own normalisation), else a
    scratch copy written from the Parquet profiles in blocks. Memory holds two blocks however many
    samples there are; with GPUs, the split's vectors are searched there by FAISS instead."""
    progress = progress or NullProgress()
    db.require_space(space)
    m = db.manifest
    entry = _approximate_index(db, space)
    if entry is not None:
        return _knn_graph_approximate(db, space, k, entry, progress)
    if faiss.get_num_gpus() > 0:
        return _knn_graph_gpu(db, space, k, progress)
    meta = db._execute("SELECT sample_id, split FROM samples").fetchnumpy()
    task = progress.task(f"neighbour graph ({space})", m.rows())
    out_ids, out_nb, out_sim = [], [], []
    with _graph_vectors(db, space) as vectors:
        split_of = _split_of(vectors.ids, meta)
        for split in sorted(m.splits):
            positions = np.flatnonzero(split_of == split)
            if len(positions) <= k:
                task.advance(len(positions))
                continue
            sims, nbs = knn_positions(vectors, positions, k, block_rows(vectors.rows.shape[1]), task.advance)
            out_ids.append(vectors.ids[positions])
            out_nb.append(vectors.ids[nbs])
            out_sim.append(sims)
    task.close()
    if not out_ids:
        raise QueryError(f"no split has more than k={k} samples; lower -k")
    return Graph(space, np.concatenate(out_ids), np.concatenate(out_nb), np.concatenate(out_sim))


def _approximate_index(db, space: str):
    """The manifest entry of the stored index of ``space`` when it is approximate and this version's own (it covers
    every committed sample, in the database's own normalisation); else None (the graph is searched exactly)."""
    entry = db.manifest.indexes.get(space)
    own = entry is not None and entry.ntotal == db.manifest.rows() and not (space == "saliency" and db.overridden)
    return entry if own and entry.approximate else None


def _knn_graph_approximate(db, space: str, k: int, entry, progress) -> Graph:
    """The graph searched in the stored approximate index (read memory-mapped), one batch of queries at a time,
    each split's queries among that split's samples only."""
    index = db.snapshot.read_index(space, mapped=True)
    ivf = faiss.extract_index_ivf(index)
    meta = db._execute("SELECT sample_id, split FROM samples").fetchnumpy()
    splits = np.asarray(meta["split"], dtype=object)
    sizes = {s: int((splits == s).sum()) for s in set(splits.tolist())}
    selectors = {} if len(sizes) == 1 else {s: faiss.IDSelectorBatch(np.ascontiguousarray(meta["sample_id"][splits == s],
                                                                                          dtype=np.int64)) for s in sizes}
    task = progress.task(f"neighbour graph ({space}, approximate: {entry.built_kind})", db.manifest.rows())
    out_ids, out_nb, out_sim = [], [], []
    for ids, vectors in _chunks(db, space):
        split_of = _split_of(ids, meta)
        for split in sorted(set(split_of.tolist())):
            sel = split_of == split
            if sizes[split] > k:
                params = faiss.SearchParametersIVF(sel=selectors[split], nprobe=ivf.nprobe) if selectors else None
                sims, nbs = _search_batch(index, ivf, vectors[sel], ids[sel], k, params, selectors.get(split))
                out_ids.append(ids[sel])
                out_nb.append(nbs)
                out_sim.append(sims)
        task.advance(len(ids))
    task.close()
    if not out_ids:
        raise QueryError(f"no split has more than k={k} samples; lower -k")
    approx = Approximation(index=entry.built_kind, recall_at_10=entry.graph_recall_at_10, recall_queries=entry.recall_queries,
                           nprobe=int(ivf.nprobe))
    return Graph(space, np.concatenate(out_ids), np.concatenate(out_nb), np.concatenate(out_sim), approx)


def _search_batch(index, ivf, vectors: np.ndarray, q_ids: np.ndarray, k: int, params, selector):
    """k neighbours of each query (itself dropped) from the index; a query whose probed lists held fewer than k
    others is searched again over every list."""
    sims, nbs = index.search(np.ascontiguousarray(vectors, dtype=np.float32), k + 1, params=params)
    short = np.flatnonzero(((nbs >= 0) & (nbs != q_ids[:, None])).sum(axis=1) < k)
    if len(short):
        every = faiss.SearchParametersIVF(sel=selector, nprobe=ivf.nlist) if selector is not None else \
            faiss.SearchParametersIVF(nprobe=ivf.nlist)
        sims[short], nbs[short] = index.search(np.ascontiguousarray(vectors[short], dtype=np.float32), k + 1, params=every)
    keep = nbs != q_ids[:, None]
    keep[keep.all(axis=1), -1] = False  # self not among the k+1 (exact duplicates): drop the last
    return sims[keep].reshape(len(q_ids), k), nbs[keep].reshape(len(q_ids), k)


def _split_of(ids: np.ndarray, meta: dict) -> np.ndarray:
    """The split of each of ``ids`` (every one a committed sample)."""
    order = np.argsort(meta["sample_id"])
    pos = np.searchsorted(meta["sample_id"], ids, sorter=order)
    return np.asarray(meta["split"], dtype=object)[order][pos]


def _graph_vectors(db, space: str):
    """The search vectors of ``space`` mapped from a file (``query.graph``): the stored index if it is a
    current flat one in the database's own normalisation, else a scratch copy."""
    entry = db.manifest.indexes.get(space)
    own = entry is not None and entry.ntotal == db.manifest.rows() and not (space == "saliency" and db.overridden)
    if own:
        index = db.snapshot.read_index(space, mapped=True)
        if is_flat(index):
            return index_vectors(index)
    dim = db.manifest.n_units if space == "saliency" else db.manifest.feature_dim
    return scratch_vectors(dim, lambda: _chunks(db, space))


def _chunks(db, space: str):
    if space == "saliency":
        batch = batch_rows_for(db.manifest.n_units)
        for ids, raw, dlogit in db.snapshot.iter_raw_profiles(batch_rows=batch):
            yield ids, db.search_vectors(space, raw, dlogit)
        return
    for ids, rows in db.snapshot.iter_profiles("feature", batch_rows=batch_rows_for(db.manifest.feature_dim)):
        yield ids, db.search_vectors(space, rows)


def _knn_graph_gpu(db, space: str, k: int, progress) -> Graph:
    """The graph searched by FAISS on the GPUs, one split's vectors there at a time (a flat index)."""
    m = db.manifest
    dim = m.n_units if space == "saliency" else m.feature_dim
    out_ids, out_nb, out_sim = [], [], []
    task = progress.task(f"neighbour graph ({space})", 2 * m.rows())

    def chunks(split):
        for ids, vectors in _chunks(db, space):
            task.advance(len(ids))
            sel = np.isin(ids, split)
            if sel.any():
                yield ids[sel], vectors[sel]

    for split in sorted(m.splits):
        ids = db.ids_where(None, split)
        if len(ids) <= k:
            continue
        index = to_search_device(build_index(dim, lambda: chunks(ids), "flat"))
        for q_ids, vectors in chunks(ids):
            sims, nbs = search(index, vectors, k + 1)
            keep = nbs != q_ids[:, None]
            keep[keep.all(axis=1), -1] = False  # self not among the k+1 (exact duplicates): drop the last
            out_ids.append(q_ids)
            out_nb.append(nbs[keep].reshape(len(q_ids), k))
            out_sim.append(sims[keep].reshape(len(q_ids), k))
        del index
    task.close()
    if not out_ids:
        raise QueryError(f"no split has more than k={k} samples; lower -k")
    return Graph(space, np.concatenate(out_ids), np.concatenate(out_nb), np.concatenate(out_sim))


def graph_table(g: Graph) -> pa.Table:
    """The knn table's rows of a graph; an approximate graph's ``Approximation`` in the parts' metadata."""
    n, k = g.neighbors.shape
    schema = KNN_SCHEMA if g.approximate is None else \
        KNN_SCHEMA.with_metadata({GRAPH_METADATA: json.dumps({"space": g.space, **g.approximate.to_dict()}).encode()})
    return pa.table(
        {
            "sample_id": np.repeat(g.ids, k),
            "rank": np.tile(np.arange(1, k + 1, dtype=np.int16), n),
            "neighbor_id": g.neighbors.reshape(-1),
            "similarity": g.similarity.reshape(-1).astype(np.float32),
            "space": pa.array([g.space] * (n * k), pa.string()),
        },
        schema=schema,
    )


def bootstrap_mean(values: np.ndarray, n_boot: int, rng: np.random.Generator) -> Estimate:
    """Mean with a percentile bootstrap 95% interval."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return Estimate(mean=None, ci95=[None, None], n=0)
    means = np.empty(n_boot)
    for b in range(n_boot):
        means[b] = values[rng.integers(0, len(values), len(values))].mean()
    lo, hi = np.percentile(means, [2.5, 97.5])
    return Estimate(mean=float(values.mean()), ci95=[float(lo), float(hi)], n=int(len(values)))


def mistakes(db, k: int = 10, *, n_boot: int = 1000, seed: int = 0, write: bool = True, progress=None,
             wait: bool = False, store=None) -> MistakesReport:
    """Per split and space: the share of correctly classified samples among the k nearest
    neighbours, for correct and for incorrect samples, and the share of an incorrect
    sample's neighbours with its exact confusion pair; bootstrap 95% intervals."""
    if k < 1:
        raise QueryError(f"-k must be at least 1, got {k}")
    db.require_samples()
    spaces = [s for s in db.spaces if s in db.manifest.indexes]
    current = _current_graphs(db, k, spaces) if write else None
    if current is not None:  # the same question on an unchanged version: nothing to redo
        report = stored_mistakes(db, n_boot=n_boot, seed=seed, graphs=current)
        report.reused = True
        return report
    meta = db._execute("SELECT sample_id, split, label, pred, correct, loss FROM samples ORDER BY sample_id").fetchnumpy()
    graphs = [knn_graph(db, space, k, progress) for space in spaces]
    report = shares_report(db, meta, graphs, k, n_boot, seed)
    report.base_commit = db.commit
    mark_approximate(report, {g.space: g.approximate for g in graphs if g.approximate is not None})
    if write:
        store_derived(db, lambda w: {"knn": [w.write("knn", graph_table(g)) for g in graphs]},
                      operation=f"mistakes -k {k}", store=store, wait=wait)
        report.stored = True
    return report


def _current_graphs(db, k: int, spaces: list[str]) -> list[Graph] | None:
    """The stored knn table's graphs when they are this version's graph of ``k`` neighbours in exactly ``spaces``:
    computed from these samples and statistics, for the database's own normalisation (then searching again would
    store the same); else None."""
    m = db.manifest
    if db.overridden or not m.tables.get("knn") or "knn" in m.stale_derived():
        return None
    try:
        stored_k, graphs = stored_graphs(db)
    except QueryError:
        return None
    return graphs if stored_k == k and sorted(g.space for g in graphs) == sorted(spaces) else None


def shares_report(db, meta: dict, graphs: list[Graph], k: int, n_boot: int, seed: int) -> MistakesReport:
    """The shared-mistake statistics of neighbour graphs (each graph's rows taken in sample id order, so a
    graph searched now and the same graph read back from the knn table give the same report)."""
    report = MistakesReport(k=k, bootstrap=n_boot, seed=seed, normalisation=db.normalisation)
    if "feature" not in db.spaces:
        report.note = (f"the feature space is absent: database '{db.path}' has no feature vectors "
                       f"({db.manifest.no_features_reason}); only the saliency space is compared with the baselines")
    order = meta["sample_id"]
    for g in graphs:
        rng = np.random.default_rng(seed)
        rows = np.argsort(g.ids, kind="stable")
        q = np.searchsorted(order, g.ids[rows])
        nb = np.searchsorted(order, g.neighbors[rows])
        correct_q = meta["correct"][q]
        share_correct = meta["correct"][nb].mean(axis=1)
        same_pair = ((meta["label"][nb] == meta["label"][q][:, None]) & (meta["pred"][nb] == meta["pred"][q][:, None])).mean(axis=1)
        splits = meta["split"][q]
        for split in sorted(set(splits.tolist())):
            sel = splits == split
            entry = report.splits.setdefault(split, SplitShares(
                samples=int(sel.sum()), correct=int(correct_q[sel].sum()), incorrect=int((~correct_q[sel]).sum())))
            entry.spaces[g.space] = SpaceShares(
                correct_neighbors_of_correct=bootstrap_mean(share_correct[sel & correct_q], n_boot, rng),
                correct_neighbors_of_incorrect=bootstrap_mean(share_correct[sel & ~correct_q], n_boot, rng),
                same_confusion_of_incorrect=bootstrap_mean(same_pair[sel & ~correct_q], n_boot, rng),
            )
    _add_baselines(report, meta, k, n_boot, seed)
    return report


def stored_graphs(db) -> tuple[int, list[Graph]]:
    """The neighbour graphs of the stored knn table, read (never searched): (k, one graph per space).
    A QueryError when there is none, or when it is not a complete k-neighbour graph per space."""
    rerun = f"run `saliencydb mistakes --db {db.path}`"
    if "knn" not in db.manifest.tables:
        raise QueryError(f"no neighbour graph is stored; {rerun}")
    graphs, ks = [], set()
    for (space,) in db._execute("SELECT DISTINCT space FROM knn ORDER BY space").fetchall():
        t = db._execute("SELECT sample_id, rank, neighbor_id, similarity FROM knn WHERE space = ? "
                           "ORDER BY sample_id, rank", [space]).fetchnumpy()
        k = int(t["rank"].max())
        n = len(t["rank"]) // k
        if n * k != len(t["rank"]) or not np.array_equal(t["rank"], np.tile(np.arange(1, k + 1), n)):
            raise QueryError(f"the stored knn table is not a complete {k}-neighbour graph in the {space} space; {rerun}")
        graphs.append(Graph(space, np.asarray(t["sample_id"])[::k], np.asarray(t["neighbor_id"]).reshape(n, k),
                            np.asarray(t["similarity"]).reshape(n, k)))
        ks.add(k)
    if len(ks) != 1:
        raise QueryError(f"the stored knn table holds no graph, or graphs of different k ({sorted(ks)}); {rerun}")
    order = [s for s in db.spaces if s in {g.space for g in graphs}]
    return ks.pop(), sorted(graphs, key=lambda g: order.index(g.space) if g.space in order else len(order))


def stored_mistakes(db, *, n_boot: int = 1000, seed: int = 0, graphs: list[Graph] | None = None) -> MistakesReport:
    """``mistakes``' report from the stored knn table (read, never searched): the same shares as the run that
    stored it. A QueryError when the table is missing, or was computed from other samples or statistics."""
    stale = db.manifest.stale_derived()
    if "knn" in stale:
        raise QueryError(f"the stored neighbour graph was computed at commit {stale['knn']}, from other samples or "
                         f"statistics than this version's; run `saliencydb mistakes --db {db.path}` to refresh it")
    k, graphs = stored_graphs(db) if graphs is None else (graphs[0].neighbors.shape[1], graphs)  # given: already read
    meta = db._execute("SELECT sample_id, split, label, pred, correct, loss FROM samples ORDER BY sample_id").fetchnumpy()
    report = shares_report(db, meta, graphs, k, n_boot, seed)
    report.base_commit = db.manifest.derived["knn"].base_commit if "knn" in db.manifest.derived else None
    report.stored = True
    mark_approximate(report, stored_approximations(db))
    return report


def stored_approximations(db) -> dict[str, Approximation]:
    """Space -> the ``Approximation`` of the stored knn table's approximate graphs (read from its parts' metadata)."""
    found = {}
    for rel in db.manifest.tables.get("knn", []):
        meta = db.snapshot.read_table(rel, columns=["space"]).schema.metadata or {}
        if GRAPH_METADATA in meta:
            doc = json.loads(meta[GRAPH_METADATA])
            space = doc.pop("space")
            found[space] = Approximation(**doc)
    return found


def mark_approximate(report: MistakesReport, approximations: dict[str, Approximation]) -> None:
    """Say in ``report`` (its note and ``approximate``) which spaces' graphs were searched in an approximate index."""
    if not approximations:
        return
    report.approximate = dict(approximations)
    said = []
    for space, a in approximations.items():
        recall = ("not measured" if a.recall_at_10 is None else
                  f"{a.recall_at_10:.3f} against exact search on {a.recall_queries} stored samples")
        said.append(f"the {space} neighbour graph is approximate: searched in the {a.index} index (nprobe {a.nprobe}), "
                    f"recall@10 {recall}")
    report.note = "; ".join(([report.note] if report.note else []) + said)


def _add_baselines(report: MistakesReport, meta: dict, k: int, n_boot: int, seed: int) -> None:
    """The same statistics for neighbours chosen without the profile (``query.baselines``), per split."""
    for split, entry in report.splits.items():
        sel = meta["split"] == split
        correct = np.asarray(meta["correct"][sel], dtype=bool)
        label, pred = np.asarray(meta["label"][sel]), np.asarray(meta["pred"][sel])
        loss = np.asarray(meta["loss"][sel], dtype=np.float64)
        for name, (share_correct, same_pair) in baseline_shares(correct, label, pred, loss, k).items():
            rng = np.random.default_rng(seed)
            ok = ~np.isnan(share_correct)
            entry.baselines[name] = SpaceShares(
                correct_neighbors_of_correct=bootstrap_mean(share_correct[ok & correct], n_boot, rng),
                correct_neighbors_of_incorrect=bootstrap_mean(share_correct[ok & ~correct], n_boot, rng),
                same_confusion_of_incorrect=bootstrap_mean(same_pair[ok & ~correct], n_boot, rng),
            )
