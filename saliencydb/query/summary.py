"""``saliencydb info``: one version of a database summarised as a ``DatabaseInfo``."""

from __future__ import annotations

from ..schemas import DERIVED_TABLES, profile_bytes
from ..storage import list_versions, read_current
from .results import DatabaseInfo, DerivedInfo, IndexInfo, ModelInfo, SplitInfo, StatsInfo, UnitsInfo


def database_info(db) -> DatabaseInfo:
    m = db.manifest
    per_split = db.split_summary()
    failures = dict(db._execute("SELECT split, count(*) FROM failures GROUP BY split").fetchall())
    splits = {name: SplitInfo(source=rec.source, complete=rec.complete,
                              samples=per_split.get(name, {}).get("samples", 0),
                              accuracy=per_split.get(name, {}).get("accuracy"),
                              mistakes=per_split.get(name, {}).get("mistakes", 0),
                              failures=int(failures.get(name, 0)))
              for name, rec in m.splits.items()}
    stale = m.stale_derived()
    try:
        latest = read_current(db.path).commit
    except Exception:  # noqa: BLE001 - a broken current manifest does not stop reading a kept version
        latest = None
    return DatabaseInfo(
        path=str(db.path), format_version=m.format_version, commit=m.commit, latest_commit=latest,
        versions=len(list_versions(db.path)), operation=m.operation,
        model=ModelInfo(spec=m.model.spec, weights=m.model.weights, weights_sha256=m.model.weights_sha256,
                        num_classes=m.model.num_classes, transform=m.model.transform,
                        transform_source=m.model.transform_source, random_seed=m.model.random_seed),
        units=UnitsInfo(kind=m.units["kind"], count=m.n_units, layers=len(m.units["layers"]), aggregate=m.aggregate,
                        excluded=[f"{e['param']}: {e['reason']}" for e in m.units.get("excluded", [])],
                        profile_dtype=m.profile_dtype, profile_bytes=m.profile_dtype and profile_bytes(m.n_units, m.profile_dtype)),
        feature_dim=m.feature_dim, metric=m.metric, samples=m.rows(), splits=splits,
        statistics=None if m.stats is None else StatsInfo(m.stats.splits, m.stats.count, m.stats.frozen,
                                                                 m.profile_normalisation, m.stats.source),
        indexes={k: _index_info(v, m.rows()) for k, v in m.indexes.items()},
        derived={name: DerivedInfo(base_commit=m.derived[name].base_commit if name in m.derived else None, stale=name in stale)
                 for name in DERIVED_TABLES if name in m.tables},
    )


def _index_info(entry, rows: int) -> IndexInfo:
    """An index's state; an approximate one with its measured recall (an exact one's JSON as before)."""
    info = IndexInfo(kind=entry.built_kind, requested=entry.kind, ntotal=entry.ntotal, stale=entry.ntotal != rows)
    if entry.approximate:
        info.approximate, info.description = True, entry.describe()
        info.recall_at_10, info.graph_recall_at_10 = entry.recall_at_10, entry.graph_recall_at_10
        info.recall_queries, info.nprobe, info.rerank = entry.recall_queries, entry.nprobe, entry.rerank
    return info
