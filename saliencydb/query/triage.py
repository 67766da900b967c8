"""Triage of a newly ingested split: which new mistakes fall into known error groups, which
are new failure modes, and which layers' saliency moved."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from ..errors import QueryError
from ..indexer.store import iter_profiles
from ..saliency import UnitLayout, standardize
from ..schemas import TRIAGE_SCHEMA

NEW = -1
RADIUS_QUANTILE = 5  # a new mistake joins a group when it is closer than the group's farthest 5% of members


def layer_means(db, split: str) -> np.ndarray:
    """Mean standardised saliency per layer over one split."""
    m = db.manifest
    mean, std = db.stats
    total, n = np.zeros(m.n_units), 0
    for _, rows in iter_profiles(db.path, m, split=split):
        total += standardize(rows, mean, std).sum(axis=0, dtype=np.float64)
        n += len(rows)
    layout = UnitLayout.from_dict(m.units)
    per_unit = total / max(n, 1)
    return np.array([per_unit[l.offset : l.stop].mean() for l in layout.layers])


def triage(db, split: str, *, write: bool = True, top_layers: int = 5) -> dict:
    m = db.manifest
    if split not in m.splits:
        raise QueryError(f"unknown split '{split}'; the database has {', '.join(sorted(m.splits))}")
    assigned = db.sql("SELECT sample_id, cluster, run FROM clusters")
    if assigned.num_rows == 0:
        raise QueryError("no error groups yet: run `saliencydb clusters` on the reference data first")
    run = assigned.column("run")[0].as_py()
    members = assigned.column("sample_id").to_numpy()
    labels = assigned.column("cluster").to_numpy()
    new_ids = db.ids_where("NOT correct AND sample_id NOT IN (SELECT sample_id FROM clusters)", split)
    groups = sorted(set(labels.tolist()))
    centroids, radius = [], []
    for c in groups:
        v = db.vectors("saliency", members[labels == c])
        centroid = v.mean(axis=0)
        centroid /= max(np.linalg.norm(centroid), 1e-12)
        centroids.append(centroid)
        radius.append(float(np.percentile(v @ centroid, RADIUS_QUANTILE)))
    centroids = np.stack(centroids)
    radius = np.array(radius)
    if len(new_ids):
        sims = db.vectors("saliency", new_ids) @ centroids.T
        best = sims.argmax(axis=1)
        best_sim = sims[np.arange(len(new_ids)), best]
        cluster = np.where(best_sim >= radius[best], np.array(groups)[best], NEW).astype(np.int32)
    else:
        best_sim, cluster = np.zeros(0, np.float32), np.zeros(0, np.int32)
    reference = (m.stats or {}).get("splits", [])
    layout = UnitLayout.from_dict(m.units)
    ref_means = np.mean([layer_means(db, s) for s in reference], axis=0) if reference else None
    new_means = layer_means(db, split)
    drift = []
    if ref_means is not None:
        order = np.argsort(-np.abs(new_means - ref_means))[:top_layers]
        drift = [{"layer": layout.layers[i].name, "reference_mean_z": round(float(ref_means[i]), 4),
                  "new_mean_z": round(float(new_means[i]), 4), "change": round(float(new_means[i] - ref_means[i]), 4)}
                 for i in order]
    counts = {int(c): int((cluster == c).sum()) for c in groups}
    result = {
        "split": split,
        "run": run,
        "new_mistakes": int(len(new_ids)),
        "known_groups": [{"cluster": c, "new_mistakes": n} for c, n in counts.items()],
        "new_failure_mode": int((cluster == NEW).sum()),
        "reference_splits": reference,
        "layer_drift": drift,
    }
    if write:
        _write(db, split, run, new_ids, cluster, best_sim)
    return result


def _write(db, split, run, ids, cluster, sim) -> None:
    from ..indexer.writer import DatabaseWriter

    table = pa.table({"sample_id": ids.astype(np.int64), "split": [split] * len(ids), "cluster": cluster,
                      "similarity": np.asarray(sim, np.float32), "run": [run] * len(ids)}, schema=TRIAGE_SCHEMA)
    with DatabaseWriter(db.path) as w:
        keep, old = [], []
        for rel in w.manifest.tables.get("triage", []):  # one triage per split: replace this split's
            (old if f"/triage-{split}-" in f"/{rel.split('/')[-1]}" else keep).append(rel)
        w.manifest.tables["triage"] = keep
        rel = w.write_parquet(w.unique_name("triage", f"triage-{split}", ".parquet"), table)
        w.manifest.tables["triage"].append(rel)
        w.commit()
        w.drop_unlisted(old)
