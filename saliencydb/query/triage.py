"""Triage of a newly ingested split: which new mistakes fall into known error groups, which
are new failure modes, and which layers' saliency moved."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from ..errors import QueryError
from ..saliency import UnitLayout
from ..schemas import TRIAGE_SCHEMA
from ..storage.derived import store_derived
from .results import GroupCount, LayerDrift, TriageResult

NEW = -1
RADIUS_QUANTILE = 5  # a new mistake joins a group when it is closer than the group's farthest 5% of members


def layer_means(db, split: str) -> np.ndarray:
    """Mean standardised saliency per layer over one split."""
    m = db.manifest
    total, n = np.zeros(m.n_units), 0
    for _, raw, dlogit in db.snapshot.iter_raw_profiles(split=split):
        total += db.standardise(raw, dlogit=dlogit).sum(axis=0, dtype=np.float64)
        n += len(raw)
    layout = UnitLayout.from_dict(m.units)
    per_unit = total / max(n, 1)
    return np.array([per_unit[l.offset : l.stop].mean() for l in layout.layers])


def triage(db, split: str, *, write: bool = True, top_layers: int = 5, wait: bool = False, store=None) -> TriageResult:
    """Assign the mistakes of ``split`` that are in no error group to the nearest known group (or mark
    them new); with ``write``, store them in the triage table (``store``: a ``DerivedWriter``)."""
    m = db.manifest
    if split not in m.splits:
        raise QueryError(f"unknown split '{split}'; the database has {', '.join(sorted(m.splits))}")
    assigned, run, built_on = _error_groups(db, split)
    new_ids = db.ids_where("NOT correct AND sample_id NOT IN (SELECT sample_id FROM clusters)", split)
    groups, best_sim, cluster = _assign(db, assigned, new_ids)
    reference = m.stats.splits if m.stats else []
    counts = {int(c): int((cluster == c).sum()) for c in groups}
    result = TriageResult(split=split, run=run, new_mistakes=int(len(new_ids)),
                          known_groups=[GroupCount(c, n) for c, n in counts.items()],
                          new_failure_mode=int((cluster == NEW).sum()), reference_splits=reference,
                          groups_built_on=built_on, layer_drift=_layer_drift(db, split, reference, top_layers),
                          base_commit=db.commit)
    if write:
        table = pa.table({"sample_id": new_ids.astype(np.int64), "split": [split] * len(new_ids), "cluster": cluster,
                          "similarity": np.asarray(best_sim, np.float32), "run": [run] * len(new_ids)}, schema=TRIAGE_SCHEMA)

        def build(w):
            # one triage per split: this split's file is replaced; the other splits' are kept while
            # they were computed from these same samples and statistics
            base = w.manifest.derived.get("triage")
            same = base is not None and base.data == db.manifest.data_version()
            keep = [rel for rel in w.files("triage") if same and f"/triage-{split}-" not in f"/{rel.split('/')[-1]}"]
            return {"triage": keep + [w.write("triage", table, stem=f"triage-{split}")]}

        store_derived(db, build, operation=f"triage {split}", store=store, wait=wait)
        result.stored = True
    return result


def _error_groups(db, split: str):
    """The clusters table, its run and the splits it was built on (refused when they include ``split``)."""
    assigned = db.sql("SELECT sample_id, cluster, run FROM clusters")
    if assigned.num_rows == 0:
        raise QueryError("no error groups yet: run `saliencydb clusters` on the reference data first")
    run = assigned.column("run")[0].as_py()
    built_on = [r[0] for r in db._execute(
        "SELECT DISTINCT s.split FROM clusters c JOIN samples s USING (sample_id) ORDER BY 1").fetchall()]
    if split in built_on:
        others = [s for s in sorted(db.manifest.splits) if s != split]
        hint = (f"build them without it first: `saliencydb clusters --db {db.path} --split {others[0]}`" if others
                else "ingest a reference split and cluster it first")
        raise QueryError(f"the error groups ({run}) were built on split(s) {', '.join(built_on)}, which include '{split}': "
                         f"its mistakes are already in them, so triage would find nothing new; {hint}")
    return assigned, run, built_on


def _assign(db, assigned, new_ids: np.ndarray):
    """(groups, similarity to the nearest centroid, assigned group or NEW) of each new mistake: it joins
    a group when it is closer to its centroid than the group's farthest 5% of members."""
    members = assigned.column("sample_id").to_numpy()
    labels = assigned.column("cluster").to_numpy()
    groups = sorted(set(labels.tolist()))
    centroids, radius = [], []
    for c in groups:
        v = db.vectors("saliency", members[labels == c])
        centroid = v.mean(axis=0)
        centroid /= max(np.linalg.norm(centroid), 1e-12)
        centroids.append(centroid)
        radius.append(float(np.percentile(v @ centroid, RADIUS_QUANTILE)))
    centroids, radius = np.stack(centroids), np.array(radius)
    if not len(new_ids):
        return groups, np.zeros(0, np.float32), np.zeros(0, np.int32)
    sims = db.vectors("saliency", new_ids) @ centroids.T
    best = sims.argmax(axis=1)
    best_sim = sims[np.arange(len(new_ids)), best]
    return groups, best_sim, np.where(best_sim >= radius[best], np.array(groups)[best], NEW).astype(np.int32)


def _layer_drift(db, split: str, reference: list[str], top_layers: int) -> list[LayerDrift]:
    """The layers whose mean standardised saliency over ``split`` moved most from the reference splits'."""
    if not reference:
        return []
    layout = UnitLayout.from_dict(db.manifest.units)
    ref_means = np.mean([layer_means(db, s) for s in reference], axis=0)
    new_means = layer_means(db, split)
    order = np.argsort(-np.abs(new_means - ref_means))[:top_layers]
    return [LayerDrift(layout.layers[i].name, round(float(ref_means[i]), 4), round(float(new_means[i]), 4),
                       round(float(new_means[i] - ref_means[i]), 4)) for i in order]
