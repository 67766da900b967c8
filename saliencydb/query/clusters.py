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


def clusters(db, n_clusters: int = 8, *, errors_only: bool = True, split: str | None = None, seed: int = 0,
             write: bool = True, niter: int = 50, wait: bool = False, store=None) -> ClustersResult:
    """Cluster the (misclassified, by default) samples; write clusters + blame tables; return a summary."""
    if n_clusters < 1:
        raise QueryError(f"--n-clusters must be at least 1, got {n_clusters}")
    db.require_samples()
    ids = db.ids_where("NOT correct" if errors_only else None, split)
    what = ("misclassified " if errors_only else "") + "samples" + (f" in split '{split}'" if split else "")
    if len(ids) < n_clusters:
        raise QueryError(f"--n-clusters {n_clusters} is more than the {len(ids)} {what}; lower --n-clusters")
    z = db.z(ids)
    assign, sim = _kmeans(l2_normalize(z), ids, n_clusters, seed, niter)
    run = f"kmeans:k={n_clusters}:seed={seed}:" + ("errors" if errors_only else "all") + f":split={split or '*'}"
    if db.normalisation != "zscore":  # the paper's needs no mark (and runs stored before the option have none)
        run += f":norm={db.normalisation}"

    layout = UnitLayout.from_dict(db.manifest.units)
    layer_of = layout.layer_of(np.arange(layout.n_units))
    names = [l.name for l in layout.layers]
    channel = np.arange(layout.n_units) - np.array([l.offset for l in layout.layers])[layer_of]
    meta = db._execute(
        "SELECT sample_id, key, label_name, pred_name, text FROM samples WHERE sample_id IN (SELECT unnest(?::BIGINT[]))", [ids.tolist()]
    ).fetchall()
    by_id = {r[0]: r for r in meta}
    groups, blame_parts = [], []
    for c in range(n_clusters):
        members = np.flatnonzero(assign == c)
        if len(members) == 0:
            continue
        mean_z = z[members].mean(axis=0)
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
    result = ClustersResult(run=run, n_clusters=n_clusters, samples=int(len(ids)), clusters=groups, base_commit=db.commit,
                            images=image_context(db, [e.sample_id for g in groups for e in g.exemplars]))
    if write:
        tables = _tables(run, ids, assign, sim, blame_parts, names, layer_of, channel)
        store_derived(db, lambda w: {name: [w.write(name, t)] for name, t in tables.items()},
                      operation=f"clusters {run}", store=store, wait=wait)
        result.stored = True
    return result


def _kmeans(x: np.ndarray, ids: np.ndarray, n_clusters: int, seed: int, niter: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded spherical k-means: each row's cluster and its similarity to the centroid. Clusters are
    numbered by size (largest first), ties by smallest member id, so numbering is stable."""
    km = faiss.Kmeans(x.shape[1], n_clusters, niter=niter, seed=seed, spherical=True, verbose=False,
                      min_points_per_centroid=1, max_points_per_centroid=1_000_000)
    km.train(x)
    sim, assign = km.index.search(x, 1)
    assign, sim = assign[:, 0].astype(np.int32), sim[:, 0]
    sizes = np.bincount(assign, minlength=n_clusters)
    firsts = np.array([ids[assign == c].min() if sizes[c] else np.iinfo(np.int64).max for c in range(n_clusters)])
    order = np.lexsort((firsts, -sizes))
    relabel = np.empty(n_clusters, np.int32)
    relabel[order] = np.arange(n_clusters, dtype=np.int32)
    return relabel[assign], sim


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
