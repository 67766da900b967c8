"""Error groups: seeded k-means (FAISS) over standardised, L2-normalised profiles."""

from __future__ import annotations

from collections import Counter

import faiss
import numpy as np
import pyarrow as pa

from ..errors import QueryError
from ..saliency import UnitLayout, l2_normalize
from ..schemas import BLAME_SCHEMA, CLUSTERS_SCHEMA
from ..storage.derived import store_derived
from .html import image_context
from .results import ClustersResult, Confusion, ErrorGroup, Exemplar, LayerScore, UnitScore

TOP_PAIRS = 3
TOP_UNITS = 5
TOP_LAYERS = 3
EXEMPLARS = 3
TRAIN_BYTES = 256 << 20  # the most of the training matrix (float32 rows x units) held at once
BLOCK_BYTES = 32 << 20  # the profiles read, and searched, per block of the streaming pass
MAX_BATCH_ROWS = 4096


def clusters(db, n_clusters: int = 8, *, errors_only: bool = True, split: str | None = None, seed: int = 0,
             write: bool = True, niter: int = 50, wait: bool = False, store=None) -> ClustersResult:
    """Cluster the (misclassified, by default) samples; write clusters + blame tables; return a summary.

    When the chosen samples' standardised profiles fit ``TRAIN_BYTES`` (rows x units x 4 bytes), they
    are clustered whole, in memory. Above it, the spherical k-means is trained on a seeded sample of
    the chosen rows (``TRAIN_BYTES`` worth, at least ``n_clusters`` rows; drawn with
    ``np.random.default_rng(seed)`` from the sorted ids, so deterministic for a seed), then every
    chosen row is assigned to its nearest centroid in one streaming pass over the Parquet parts, which
    also sums each cluster's z for its blame. Either way the profiles are read and standardised
    ``BLOCK_BYTES`` at a time, so the most held at once is about ``TRAIN_BYTES`` times three (the
    matrix, its normalised copy and a temporary, in memory) or ``TRAIN_BYTES`` plus six blocks
    (streaming: a block's float64 standardisation, the rows awaiting a search and their normalised
    copy), plus O(rows) small arrays and O(n_clusters x units) sums: it does not grow with the
    number of samples."""
    if n_clusters < 1:
        raise QueryError(f"--n-clusters must be at least 1, got {n_clusters}")
    db.require_samples()
    ids = db.ids_where("NOT correct" if errors_only else None, split)
    what = ("misclassified " if errors_only else "") + "samples" + (f" in split '{split}'" if split else "")
    if len(ids) < n_clusters:
        raise QueryError(f"--n-clusters {n_clusters} is more than the {len(ids)} {what}; lower --n-clusters")
    run = f"kmeans:k={n_clusters}:seed={seed}:" + ("errors" if errors_only else "all") + f":split={split or '*'}"
    if db.normalisation != "zscore":  # the paper's needs no mark (and runs stored before the option have none)
        run += f":norm={db.normalisation}"
    stored = _stored_run(db, run, ids, n_clusters) if write else None
    assign, sim, means = stored if stored is not None else _cluster(db, ids, n_clusters, seed, niter, split)

    layout = UnitLayout.from_dict(db.manifest.units)
    layer_of = layout.layer_of(np.arange(layout.n_units))
    names = [l.name for l in layout.layers]
    channel = np.arange(layout.n_units) - np.array([l.offset for l in layout.layers])[layer_of]
    groups, blame_parts = _groups(db, ids, assign, sim, means, names, layer_of, channel)
    result = ClustersResult(run=run, n_clusters=n_clusters, samples=int(len(ids)), clusters=groups, base_commit=db.commit,
                            images=image_context(db, [e.sample_id for g in groups for e in g.exemplars]))
    if stored is not None:  # the same run on an unchanged version: the stored groups are the answer, nothing to store
        result.stored, result.reused = True, True
        result.base_commit = db.manifest.derived["clusters"].base_commit
    elif write:
        tables = _tables(run, ids, assign, sim, blame_parts, names, layer_of, channel)
        store_derived(db, lambda w: {name: [w.write(name, t)] for name, t in tables.items()},
                      operation=f"clusters {run}", store=store, wait=wait)
        result.stored = True
    return result


def _stored_run(db, run: str, ids: np.ndarray, n_clusters: int):
    """(assign, sim, means) of ``run`` read back from the stored clusters and blame tables when they hold exactly
    it for this version (computed from these samples and statistics, the same rows), else None."""
    m = db.manifest
    stale = m.stale_derived()
    if db.overridden or any(not m.tables.get(t) or t in stale for t in ("clusters", "blame")):
        return None
    t = db._execute("SELECT sample_id, cluster, distance, run FROM clusters ORDER BY sample_id").fetchnumpy()
    if not np.array_equal(t["sample_id"], ids) or set(t["run"].tolist()) != {run}:
        return None
    b = db._execute("SELECT cluster, unit_id, mean_z FROM blame WHERE run = ?", [run]).fetchnumpy()
    means = np.zeros((n_clusters, m.n_units), np.float32)
    if len(b["cluster"]) and (b["cluster"].max() >= n_clusters or b["unit_id"].max() >= m.n_units):
        return None
    means[b["cluster"], b["unit_id"]] = b["mean_z"]
    sim = (1.0 - t["distance"].astype(np.float64)).astype(np.float32)
    return t["cluster"].astype(np.int64), sim, means


def _groups(db, ids, assign, sim, means, names, layer_of, channel) -> tuple[list[ErrorGroup], list]:
    """The summary of each non-empty cluster, and its units ranked by mean z (the blame table's rows)."""
    meta = db._execute(
        "SELECT sample_id, key, label_name, pred_name, text FROM samples WHERE sample_id IN (SELECT unnest(?::BIGINT[]))", [ids.tolist()]
    ).fetchall()
    by_id = {r[0]: r for r in meta}
    groups, blame_parts = [], []
    for c in range(len(means)):
        members = np.flatnonzero(assign == c)
        if len(members) == 0:
            continue
        mean_z = means[c]
        rank = np.argsort(-mean_z, kind="stable")
        blame_parts.append((c, rank, mean_z[rank]))
        pairs = Counter(f"{by_id[ids[i]][2]} -> {by_id[ids[i]][3]}" for i in members)
        layer_means = np.bincount(layer_of, weights=mean_z, minlength=len(names)) / np.bincount(layer_of, minlength=len(names))
        nearest = members[np.argsort(-sim[members], kind="stable")[:EXEMPLARS]]
        groups.append(ErrorGroup(
            cluster=int(c),
            size=int(len(members)),
            top_confusions=[Confusion(p, n, round(n / len(members), 4)) for p, n in pairs.most_common(TOP_PAIRS)],
            top_layers=[LayerScore(names[i], round(float(layer_means[i]), 4)) for i in np.argsort(-layer_means)[:TOP_LAYERS]],
            top_units=[UnitScore(int(u), names[layer_of[u]], int(channel[u]), round(float(mean_z[u]), 4)) for u in rank[:TOP_UNITS]],
            exemplars=[Exemplar(int(ids[i]), by_id[ids[i]][1], round(float(sim[i]), 4), by_id[ids[i]][4]) for i in nearest],
        ))
    return groups, blame_parts


def _in_memory(n_rows: int, n_units: int) -> bool:
    """Whether the chosen rows' standardised profiles fit the training budget (then clustered whole)."""
    return n_rows * n_units * 4 <= TRAIN_BYTES


def _cluster(db, ids: np.ndarray, n_clusters: int, seed: int, niter: int, split: str | None):
    """(cluster of each row of ``ids``, its similarity to the centroid, mean z of each cluster (float32,
    n_clusters x units; rows of empty clusters unused))."""
    if not _in_memory(len(ids), db.manifest.n_units):
        return _streamed(db, ids, n_clusters, seed, niter, split)
    z = _z(db, ids)
    assign, sim = _kmeans(l2_normalize(z), ids, n_clusters, seed, niter)
    means = np.zeros((n_clusters, z.shape[1]), np.float32)
    for c in range(n_clusters):
        members = np.flatnonzero(assign == c)
        if len(members):
            means[c] = z[members].mean(axis=0)
    return assign, sim, means


def _z(db, ids: np.ndarray) -> np.ndarray:
    """``db.z(ids)``, read ``BLOCK_BYTES`` of rows at a time (the same values: standardisation is row by
    row), so its float64 intermediates are a block's, not the whole matrix's."""
    step = int(max(1, BLOCK_BYTES // (4 * db.manifest.n_units)))
    if len(ids) <= step:
        return db.z(ids)
    z = np.empty((len(ids), db.manifest.n_units), np.float32)
    for start in range(0, len(ids), step):
        z[start:start + step] = db.z(ids[start:start + step])
    return z


def _train(x: np.ndarray, n_clusters: int, seed: int, niter: int) -> faiss.Kmeans:
    km = faiss.Kmeans(x.shape[1], n_clusters, niter=niter, seed=seed, spherical=True, verbose=False,
                      min_points_per_centroid=1, max_points_per_centroid=1_000_000)
    km.train(x)
    return km


def _kmeans(x: np.ndarray, ids: np.ndarray, n_clusters: int, seed: int, niter: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded spherical k-means: each row's cluster and its similarity to the centroid. Clusters are
    numbered by size (largest first), ties by smallest member id, so numbering is stable."""
    km = _train(x, n_clusters, seed, niter)
    sim, assign = km.index.search(x, 1)
    assign, sim = assign[:, 0].astype(np.int32), sim[:, 0]
    return _relabel(assign, ids, n_clusters)[assign], sim


def _relabel(assign: np.ndarray, ids: np.ndarray, n_clusters: int) -> np.ndarray:
    """New number of each cluster: by size (largest first), ties by smallest member id."""
    sizes = np.bincount(assign, minlength=n_clusters)
    firsts = np.array([ids[assign == c].min() if sizes[c] else np.iinfo(np.int64).max for c in range(n_clusters)])
    order = np.lexsort((firsts, -sizes))
    relabel = np.empty(n_clusters, np.int32)
    relabel[order] = np.arange(n_clusters, dtype=np.int32)
    return relabel


def _streamed(db, ids: np.ndarray, n_clusters: int, seed: int, niter: int, split: str | None):
    """``_cluster`` above the budget: trained on a seeded sample, every row assigned in a streaming pass."""
    n_units = db.manifest.n_units
    batch = int(max(1, min(MAX_BATCH_ROWS, BLOCK_BYTES // (4 * n_units))))
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    n_train = max(n_clusters, min(len(ids), TRAIN_BYTES // (4 * n_units)))
    chosen = sorted_ids if n_train >= len(ids) else np.sort(
        np.random.default_rng(seed).choice(sorted_ids, n_train, replace=False))
    km = _train(_read_sample(db, chosen, split, batch), n_clusters, seed, niter)
    assign_sorted, sim_sorted, sums = _assign_stream(db, sorted_ids, km, split, batch)
    assign, sim = np.empty_like(assign_sorted), np.empty_like(sim_sorted)
    assign[order], sim[order] = assign_sorted, sim_sorted
    relabel = _relabel(assign, ids, n_clusters)
    counts = np.bincount(assign, minlength=n_clusters)
    means = np.zeros_like(sums)
    means[relabel] = sums / np.maximum(counts, 1).astype(np.float32)[:, None]
    return relabel[assign], sim, means


def _read_sample(db, chosen: np.ndarray, split: str | None, batch: int) -> np.ndarray:
    """The standardised, L2-normalised profiles of the sorted ids ``chosen``, in that order, read in one pass."""
    x = np.empty((len(chosen), db.manifest.n_units), np.float32)
    found = 0
    for ids, raw, dlogit in db.snapshot.iter_raw_profiles(split=split, batch_rows=batch):
        keep = np.isin(ids, chosen)
        if keep.any():
            x[np.searchsorted(chosen, ids[keep])] = l2_normalize(db.standardise(raw[keep], dlogit=dlogit[keep]))
            found += int(keep.sum())
    if found != len(chosen):
        raise QueryError(f"{len(chosen) - found} of the chosen samples have no stored profile in database '{db.path}'")
    return x


def _assign_stream(db, sorted_ids: np.ndarray, km: faiss.Kmeans, split: str | None, batch: int):
    """One pass over the parts: each chosen row's (unnumbered) cluster and similarity, in ``sorted_ids``
    order, and each cluster's float32 sum of z, added row by row in stored order (as ``mean`` does).
    Rows are searched ``batch`` at a time, at least."""
    assign = np.full(len(sorted_ids), -1, np.int32)
    sim = np.zeros(len(sorted_ids), np.float32)
    sums = np.zeros((km.k, db.manifest.n_units), np.float32)
    pending: list[tuple[np.ndarray, np.ndarray]] = []

    def flush():
        pos = np.concatenate([p for p, _ in pending])
        z = np.concatenate([v for _, v in pending]) if len(pending) > 1 else pending[0][1]
        pending.clear()
        s, a = km.index.search(l2_normalize(z), 1)
        assign[pos], sim[pos] = a[:, 0], s[:, 0]
        for c, row in zip(a[:, 0], z):
            sums[c] += row

    for ids, raw, dlogit in db.snapshot.iter_raw_profiles(split=split, batch_rows=batch):
        keep = np.isin(ids, sorted_ids)
        if keep.any():
            pending.append((np.searchsorted(sorted_ids, ids[keep]), db.standardise(raw[keep], dlogit=dlogit[keep])))
        if sum(len(p) for p, _ in pending) >= batch:
            flush()
    if pending:
        flush()
    if (assign < 0).any():
        raise QueryError(f"{int((assign < 0).sum())} of the chosen samples have no stored profile in database '{db.path}'")
    return assign, sim, sums


def _tables(run, ids, assign, sim, blame_parts, names, layer_of, channel) -> dict:
    clusters_table = pa.table(
        {"sample_id": ids, "cluster": assign, "distance": (1.0 - sim).astype(np.float32), "run": [run] * len(ids)},
        schema=CLUSTERS_SCHEMA,
    )
    n_units = len(layer_of)
    blame = pa.table(
        {
            "run": [run] * (n_units * len(blame_parts)),
            "cluster": np.repeat([c for c, _, _ in blame_parts], n_units).astype(np.int32),
            "rank": np.tile(np.arange(1, n_units + 1, dtype=np.int32), len(blame_parts)),
            "unit_id": np.concatenate([r for _, r, _ in blame_parts]).astype(np.int32),
            "layer": [names[layer_of[u]] for _, r, _ in blame_parts for u in r],
            "channel": np.concatenate([channel[r] for _, r, _ in blame_parts]).astype(np.int32),
            "mean_z": np.concatenate([v for _, _, v in blame_parts]).astype(np.float32),
        },
        schema=BLAME_SCHEMA,
    )
    return {"clusters": clusters_table, "blame": blame}
