"""Neighbour lists of many stored samples at once: from the stored ``knn`` table where it holds
them, else searched in the vector index of the space, within each sample's split.

The report and the interventions' bench both ask for the nearest neighbours of a batch of
samples; this is the one place that reads the table and falls back to a search."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np

from ..errors import QueryError, SaliencyDBError
from .neighbors import neighbors, search

Neighbor = tuple[int, float]  # (neighbour id, similarity to the query)
SplitsOf = Callable[[np.ndarray], Sequence[str]]  # query ids -> their splits


@dataclass
class NeighborLists:
    """Per (query id, space): the query's neighbours within its split, best first, itself excluded."""

    lists: dict[tuple[int, str], list[Neighbor]] = field(default_factory=dict)
    searched: set[int] = field(default_factory=set)  # queries searched in an index rather than read from the table

    def get(self, sample_id: int, space: str) -> list[Neighbor] | None:
        return self.lists.get((int(sample_id), space))

    @property
    def spaces(self) -> set[str]:
        """The spaces that hold at least one list."""
        return {space for _, space in self.lists}


def neighbor_lists(db, ids, n: int, spaces: Sequence[str] | None = None, *, complete: bool = False,
                   split_of: SplitsOf | None = None) -> NeighborLists:
    """The ``n`` nearest neighbours of each of ``ids`` in ``spaces`` (None: every space the table
    holds, and every space the database indexes), from the ``knn`` table, else searched.

    ``complete=False`` (the report): a query's lists are the table's ranks <= n as it holds them,
    and a query with no row at all in the table is searched in each indexed space, one
    ``neighbors`` answer per query and space (the ``neighbors`` command's: candidates of an
    IVF-PQ index re-ranked exactly), min(n, split size - 1) of them; a space whose search fails
    is left out. ``complete=True`` (the interventions): a query missing any of ranks 1..n of a
    space is searched in it, in one batched search per split (n + 1 asked, the query dropped, n
    kept); a split of n samples or fewer is a QueryError, and so is a missing index.

    ``split_of(ids)``: the splits of the queries to search (read from the samples table when None).
    """
    queries = list(dict.fromkeys(int(i) for i in np.asarray(ids, dtype=np.int64).reshape(-1)))
    split_of = split_of or (lambda todo: _splits_of(db, todo))
    table = _table(db, queries, n, spaces)
    out = NeighborLists({key: [(nb, sim) for _, nb, sim in rows] for key, rows in table.items()})
    if complete:
        for space in spaces if spaces is not None else sorted(db.manifest.indexes):
            todo = [q for q in queries if [r for r, _, _ in table.get((q, space), [])] != list(range(1, n + 1))]
            if todo:
                _search_batched(db, np.asarray(todo, dtype=np.int64), n, space, split_of, out)
    else:
        held = {q for q, _ in table}
        todo = [q for q in queries if q not in held]
        if todo:
            indexed = [s for s in (spaces if spaces is not None else db.manifest.indexes) if s in db.manifest.indexes]
            _search_each(db, np.asarray(todo, dtype=np.int64), n, indexed, split_of, out)
    return out


def _table(db, queries: list[int], n: int, spaces: Sequence[str] | None) -> dict[tuple[int, str], list[tuple[int, int, float]]]:
    """(query, space) -> [(rank, neighbour id, similarity)] of ranks <= n, by rank."""
    if not queries:
        return {}
    where, params = "", [n, queries]
    if spaces is not None:
        where, params = " AND k.space IN (SELECT unnest(?::VARCHAR[]))", params + [list(spaces)]
    rows = db._execute(
        f"""SELECT k.sample_id, k.space, k.rank, k.neighbor_id, k.similarity
            FROM knn k JOIN samples s ON s.sample_id = k.neighbor_id
            WHERE k.rank <= ? AND k.sample_id IN (SELECT unnest(?::BIGINT[])){where}
            ORDER BY k.sample_id, k.space, k.rank""", params).fetchall()
    out: dict[tuple[int, str], list[tuple[int, int, float]]] = {}
    for sid, space, rank, nb, sim in rows:
        out.setdefault((int(sid), space), []).append((int(rank), int(nb), float(sim)))
    return out


def _search_batched(db, todo: np.ndarray, n: int, space: str, split_of: SplitsOf, out: NeighborLists) -> None:
    """One search per split of the queries ``todo``: n + 1 asked among the split, the query dropped."""
    by_split: dict[str, list[int]] = {}
    for sid, split in zip(todo.tolist(), split_of(todo)):
        by_split.setdefault(split, []).append(sid)
    index = db.index(space)
    for split, q in by_split.items():
        pool = db.ids_where(split=split)
        if len(pool) <= n:
            raise QueryError(f"split '{split}' has {len(pool)} samples, too few for {n} neighbours; lower --neighbors")
        sims, nbs = search(index, db.vectors(space, np.asarray(q, dtype=np.int64)), n + 1, pool)
        for sid, srow, row in zip(q, sims, nbs):
            out.lists[(sid, space)] = [(int(v), float(s)) for v, s in zip(row, srow) if v >= 0 and v != sid][:n]
        out.searched.update(q)


def _search_each(db, todo: np.ndarray, n: int, spaces: Iterable[str], split_of: SplitsOf, out: NeighborLists) -> None:
    """The ``neighbors`` answer of each query within its split, per space; failures leave the space out."""
    spaces = list(spaces)
    for sid, split in zip(todo.tolist(), split_of(todo)):
        pool = db.manifest.rows(split) - 1
        for space in spaces:
            if pool < 1:
                continue
            try:
                res = neighbors(db, sid, k=min(n, pool), space=space, split=split)
            except SaliencyDBError:
                continue
            out.lists[(sid, space)] = [(int(r["sample_id"]), r["similarity"]) for r in res.neighbors]
            out.searched.add(sid)


def _splits_of(db, ids: np.ndarray) -> list[str]:
    """The split of each id (an unknown id raises the one-line "no sample with id" error)."""
    rows = dict(db._execute("SELECT sample_id, split FROM samples WHERE sample_id IN (SELECT unnest(?::BIGINT[]))",
                               [ids.tolist()]).fetchall())
    for i in ids.tolist():
        if i not in rows:
            db.sample(i)
    return [rows[i] for i in ids.tolist()]
