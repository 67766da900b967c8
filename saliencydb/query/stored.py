"""Neighbours of a stored sample read from the stored neighbour graph (the knn table ``mistakes`` writes)
instead of searched: the same answer as ``query.neighbors`` wherever the graph holds it, in milliseconds
at any size (what the web app shows; docs/architecture.md, "the web app reads, never recomputes").

The graph holds each sample's k nearest neighbours within its own split, itself excluded, computed from
the profiles and statistics of the commit it names. It answers a search exactly when:

- it is current (``Manifest.stale_derived``: no samples or statistics changed since it was computed),
  and the view sees the database's own normalisation;
- the search is restricted to the sample's split, or the database has one split (then the two agree);
- no other filter applies, and it holds at least the k neighbours asked for in that space;
- it was computed exactly (a graph searched in an approximate index says so in its parts' metadata,
  ``knn.stored_approximations``, and is not used here: the search states its own recall).

Anything else returns None, and the caller searches. Among neighbours with exactly equal similarity
the graph ranks by committed order, as the exact search does."""

from __future__ import annotations

from .neighbors import NeighborResult, _COLUMNS, _summary
from .html import image_context
from .results import SampleMeta


def stored_neighbors(db, sample_id: int, *, k: int, space: str, split: str | None = None) -> NeighborResult | None:
    """The ``k`` nearest neighbours of stored sample ``sample_id`` in ``space`` as the stored graph holds
    them (``split``: the search is restricted to that split), or None when the graph cannot give exactly
    the answer a search would."""
    if k < 1 or not _usable(db, space):  # a bad k, space or split: the search refuses it in one line
        return None
    query = SampleMeta(**db.sample(sample_id))  # QueryError for an unknown id, as a search
    if split is not None and split != query.split or split is None and len(db.manifest.splits) != 1:
        return None
    rows = db._execute("SELECT neighbor_id, similarity FROM knn WHERE sample_id = ? AND space = ? ORDER BY rank",
                       [int(sample_id), space]).fetchall()
    if len(rows) < k:
        return None
    found = [(int(i), float(s)) for i, s in rows[:k]]
    columns = _COLUMNS + (["text"] if db.modality == "text" else [])
    meta = db.metadata([i for i, _ in found], columns)
    if len(meta) != len(found):
        return None  # a neighbour the version does not hold: never a short answer
    out = [{"rank": rank, "sample_id": i, **{c: meta[i][c] for c in columns[1:]}, "similarity": round(sim, 6)}
           for rank, (i, sim) in enumerate(found, start=1)]
    base = db.manifest.derived.get("knn")
    note = "read from the stored neighbour graph" + (f" (computed at commit {base.base_commit})" if base else "")
    return NeighborResult(query=query, space=space, k=k, neighbors=out, summary=_summary(query, out), commit=db.commit,
                          note=note, images=image_context(db))


def _usable(db, space: str) -> bool:
    m = db.manifest
    if db.overridden or "knn" not in m.tables or not m.tables["knn"] or "knn" in m.stale_derived():
        return False
    if space not in db.spaces:
        return False
    from .knn import stored_approximations

    return space not in db.memo("knn-approximations", lambda: stored_approximations(db))
