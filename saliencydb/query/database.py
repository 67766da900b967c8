"""The Database object: DuckDB views over the committed Parquet tables of one database."""

from __future__ import annotations

import os
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import QueryError
from ..indexer.store import fixed_list_to_numpy, read_stats
from ..indexer.vectors import SPACES, read_index
from ..saliency import l2_normalize, standardize
from ..schemas import (BLAME_SCHEMA, CLUSTERS_SCHEMA, FAILURES_SCHEMA, INGESTS_SCHEMA, INTERVENTIONS_SCHEMA, KNN_SCHEMA,
                       TRIAGE_SCHEMA,
                       UNITS_SCHEMA, Manifest,
                       read_manifest, samples_schema)

SALIENT_TOP_K = 10  # units per sample in the salient_units view (DESIGN §2: the top-k of s)
READ_ONLY_STATEMENTS = {"StatementType.SELECT", "StatementType.EXPLAIN"}


def _sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


class Database:
    """A read-only view of a database at its last commit (as of ``open``).

    >>> db = saliencydb.open("./db")
    >>> db.sql("SELECT split, avg(correct::int) FROM samples GROUP BY split")
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.manifest: Manifest = read_manifest(self.path)
        self.con = duckdb.connect(":memory:")
        self._indexes: dict = {}
        self._stats: tuple[np.ndarray, np.ndarray] | None = None
        self._create_views()

    # -- views --------------------------------------------------------------------------
    def _files(self, rels: list[str]) -> str:
        return "[" + ", ".join(_sql_str(str(self.path / r)) for r in rels) + "]"

    def _view(self, name: str, rels: list[str], schema: pa.Schema, select: str = "*") -> None:
        if rels:
            src = f"read_parquet({self._files(rels)})"
        else:  # an empty table of the right shape
            self.con.register(f"_empty_{name}", schema.empty_table())
            src = f"_empty_{name}"
        self.con.execute(f"CREATE OR REPLACE VIEW {name} AS SELECT {select} FROM {src}")

    def _create_views(self) -> None:
        m = self.manifest
        self._view("samples", m.part_files(), samples_schema(m.n_units, m.feature_dim),
                   "*, label_name || ' -> ' || pred_name AS confusion")
        self._view("units", [m.stats["file"]] if m.stats else [], UNITS_SCHEMA)
        for name, schema in (("failures", FAILURES_SCHEMA), ("ingests", INGESTS_SCHEMA),
                             ("knn", KNN_SCHEMA), ("clusters", CLUSTERS_SCHEMA), ("blame", BLAME_SCHEMA),
                             ("triage", TRIAGE_SCHEMA), ("interventions", INTERVENTIONS_SCHEMA)):
            self._view(name, m.tables.get(name, []), schema)
        names = m.class_names
        self.con.register("_classes", pa.table({"class": pa.array(range(len(names)), pa.int32()), "name": names}))
        self.con.execute("CREATE OR REPLACE VIEW classes AS SELECT * FROM _classes")
        # every sample's standardised profile, one row per (sample, unit); evaluated lazily
        self.con.execute(
            """CREATE OR REPLACE VIEW zscores AS
               SELECT s.sample_id, u.unit_id, u.layer, u.layer_index, u.channel,
                      (s.raw_profile[u.unit_id + 1] - u.mean) / u.std AS z
               FROM samples s CROSS JOIN units u"""
        )
        self.con.execute(
            f"""CREATE OR REPLACE VIEW salient_units AS
                SELECT sample_id, row_number() OVER (PARTITION BY sample_id ORDER BY z DESC, unit_id) AS rank,
                       unit_id, layer, layer_index, channel, z
                FROM zscores QUALIFY rank <= {SALIENT_TOP_K}"""
        )
        # the standardised profile of one sample, one row per unit; and its top-k units
        self.con.execute(
            """CREATE OR REPLACE MACRO profile(id) AS TABLE
               SELECT u.unit_id, u.layer, u.layer_index, u.channel, s.raw_profile[u.unit_id + 1] AS raw,
                      (s.raw_profile[u.unit_id + 1] - u.mean) / u.std AS z
               FROM samples s, units u WHERE s.sample_id = id ORDER BY u.unit_id"""
        )
        self.con.execute(
            """CREATE OR REPLACE MACRO top_units(id, k) AS TABLE
               SELECT row_number() OVER (ORDER BY z DESC) AS rank, * FROM profile(id) ORDER BY z DESC LIMIT k"""
        )

    # -- SQL ----------------------------------------------------------------------------
    def sql(self, query: str, params: list | None = None) -> pa.Table:
        """Run one read-only statement (SELECT / WITH / EXPLAIN / DESCRIBE ...) and return an Arrow table."""
        try:
            statements = self.con.extract_statements(query)
        except duckdb.Error as e:
            raise QueryError(f"SQL does not parse: {_first_line(e)}") from None
        if len(statements) != 1:
            raise QueryError(f"give exactly one SQL statement (got {len(statements)})")
        kind = str(statements[0].type)
        if kind not in READ_ONLY_STATEMENTS:
            raise QueryError(
                f"only read-only queries are allowed (got a {kind.split('.')[-1]} statement); "
                "the database is changed only by saliencydb commands"
            )
        try:
            return _arrow(self.con.sql(query, params=params or None))
        except duckdb.Error as e:
            raise QueryError(f"SQL error: {_first_line(e)}") from None

    # -- vectors ------------------------------------------------------------------------
    @property
    def stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Frozen (mean, std) per unit."""
        if self._stats is None:
            self._stats = read_stats(self.path, self.manifest)
        return self._stats

    def index(self, space: str):
        """The FAISS index of ``space`` (loaded once, on the CPU: single queries are cheap there, and
        filtered searches need ID selectors, which GPU indexes do not take; the batched
        neighbour graph uses the GPUs)."""
        check_space(space)
        if space not in self._indexes:
            entry = self.manifest.indexes.get(space)
            if entry is None:
                raise QueryError(f"database '{self.path}' has no {space} index; finish `saliencydb index` first")
            self._indexes[space] = read_index(self.path / entry["file"])
        return self._indexes[space]

    def vectors(self, space: str, ids: np.ndarray | list[int]) -> np.ndarray:
        """Search vectors of the given sample ids, in that order: standardised + L2-normalised
        profiles (saliency) or L2-normalised features (feature)."""
        check_space(space)
        return self.search_vectors(space, self.rows("raw_profile" if space == "saliency" else "feature", ids))

    def rows(self, column: str, ids: np.ndarray | list[int]) -> np.ndarray:
        """Stored ``raw_profile`` or ``feature`` rows of the given sample ids, in that order, float32.

        Only the parts whose id range holds a wanted id are read, with a row filter, so a few
        ids cost a few small row groups, not a scan of the whole table."""
        ids = np.asarray(ids, dtype=np.int64)
        width = self.manifest.n_units if column == "raw_profile" else self.manifest.feature_dim
        out = np.empty((len(ids), width), dtype=np.float32)
        found = np.zeros(len(ids), dtype=bool)
        for part in self.manifest.parts:
            hit = ids[(ids >= part["min_id"]) & (ids <= part["max_id"])]
            if len(hit) == 0:
                continue
            t = pq.read_table(self.path / part["file"], columns=["sample_id", column],
                              filters=[("sample_id", "in", sorted(set(hit.tolist())))])
            got = t.column("sample_id").to_numpy()
            vecs = fixed_list_to_numpy(t.column(column), width)
            pos = {int(i): r for r, i in enumerate(got)}
            for j in np.flatnonzero((ids >= part["min_id"]) & (ids <= part["max_id"])):
                r = pos.get(int(ids[j]))
                if r is not None:
                    out[j], found[j] = vecs[r], True
        if not found.all():
            missing = int(ids[~found][0])
            raise QueryError(f"no sample with id {missing} in '{self.path}' ({self.manifest.rows()} samples)")
        return out

    def search_vectors(self, space: str, rows: np.ndarray) -> np.ndarray:
        """Raw profiles (or features) turned into the vectors the index of ``space`` holds."""
        if space == "saliency":
            mean, std = self.stats
            rows = standardize(rows, mean, std)
        return l2_normalize(rows)

    def sample(self, sample_id: int) -> dict:
        """The metadata of one sample (no vectors)."""
        rows = self.con.execute(
            "SELECT sample_id, split, key, label, label_name, pred, pred_name, correct, loss, true_conf, pred_conf "
            "FROM samples WHERE sample_id = ?", [int(sample_id)]
        ).fetchall()
        if not rows:
            lo, hi = self.con.execute("SELECT min(sample_id), max(sample_id) FROM samples").fetchone()
            raise QueryError(f"no sample with id {sample_id} in '{self.path}' (ids run {lo}..{hi}); find ids with `saliencydb sql`")
        cols = ["sample_id", "split", "key", "label", "label_name", "pred", "pred_name", "correct", "loss", "true_conf", "pred_conf"]
        return dict(zip(cols, rows[0]))

    def ids_where(self, where: str | None = None, split: str | None = None) -> np.ndarray:
        """Sample ids matching an SQL predicate over the samples view and/or a split."""
        if split is not None and split not in self.manifest.splits:
            raise QueryError(f"unknown split '{split}'; the database has {', '.join(sorted(self.manifest.splits)) or 'no splits'}")
        clauses, params = [], []
        if where:
            clauses.append(f"({where})")
        if split is not None:
            clauses.append("split = ?")
            params.append(split)
        q = "SELECT sample_id FROM samples" + (" WHERE " + " AND ".join(clauses) if clauses else "")
        if where:
            try:
                statements = self.con.extract_statements(q)
            except duckdb.Error as e:
                raise QueryError(f"--where {where!r} is not one SQL predicate over samples: {_first_line(e)}") from None
            if len(statements) != 1 or str(statements[0].type) not in READ_ONLY_STATEMENTS:
                raise QueryError(f"--where {where!r} is not one SQL predicate over samples")
        try:
            return self.con.execute(q, params).fetchnumpy()["sample_id"].astype(np.int64)
        except duckdb.Error as e:
            raise QueryError(f"--where {where!r}: {_first_line(e)}") from None

    # -- queries --------------------------------------------------------------------------
    def neighbors(self, sample_id: int | None = None, *, k: int = 10, space: str = "saliency",
                  where: str | None = None, split: str | None = None, image: str | None = None,
                  label: str | int | None = None):
        """Nearest neighbours of a stored sample, or of a new image with its label (not stored)."""
        from .neighbors import neighbors

        return neighbors(self, sample_id, k=k, space=space, where=where, split=split, image=image, label=label)

    def mistakes(self, k: int = 10, *, n_boot: int = 1000, seed: int = 0, write: bool = True, progress=None):
        """The shared-mistake report (appendix A.2) per split, saliency vs feature space."""
        from .knn import mistakes

        return mistakes(self, k=k, n_boot=n_boot, seed=seed, write=write, progress=progress)

    def clusters(self, n_clusters: int = 8, *, errors_only: bool = True, split: str | None = None,
                 seed: int = 0, write: bool = True):
        """k-means error groups over standardised profiles."""
        from .clusters import clusters

        return clusters(self, n_clusters=n_clusters, errors_only=errors_only, split=split, seed=seed, write=write)

    def triage(self, split: str, *, write: bool = True) -> dict:
        """New mistakes of ``split`` assigned to known error groups or marked new; layer drift."""
        from .triage import triage

        return triage(self, split, write=write)

    def reopen(self) -> "Database":
        """A fresh view at the latest commit."""
        self.close()
        return Database(self.path)

    # -- summary ------------------------------------------------------------------------
    def info(self) -> dict:
        m = self.manifest
        rows = self.con.execute(
            "SELECT split, count(*), avg(correct::INT), sum((NOT correct)::INT) FROM samples GROUP BY split ORDER BY split"
        ).fetchall()
        per_split = {s: {"samples": n, "accuracy": round(acc, 6), "mistakes": int(mis)} for s, n, acc, mis in rows}
        failures = dict(self.con.execute("SELECT split, count(*) FROM failures GROUP BY split").fetchall())
        splits = {}
        for name, rec in m.splits.items():
            splits[name] = {
                "source": rec["source"],
                "complete": rec["complete"],
                "samples": per_split.get(name, {}).get("samples", 0),
                "accuracy": per_split.get(name, {}).get("accuracy"),
                "mistakes": per_split.get(name, {}).get("mistakes", 0),
                "failures": int(failures.get(name, 0)),
            }
        return {
            "path": str(self.path),
            "format_version": m.format_version,
            "commit": m.commit,
            "model": {
                "spec": m.model["spec"],
                "weights": m.model.get("weights"),
                "weights_sha256": m.model["weights_sha256"],
                "num_classes": m.model["num_classes"],
                "transform": m.model["transform"],
            },
            "units": {"kind": m.units["kind"], "count": m.n_units, "layers": len(m.units["layers"]), "aggregate": m.aggregate},
            "feature_dim": m.feature_dim,
            "metric": m.metric,
            "samples": m.rows(),
            "splits": splits,
            "statistics": None if m.stats is None else {"splits": m.stats["splits"], "count": m.stats["count"], "frozen": m.stats["frozen"]},
            "indexes": {k: {"kind": v.get("built", v["kind"]), "requested": v["kind"], "ntotal": v["ntotal"],
                            "stale": v["ntotal"] != m.rows()} for k, v in m.indexes.items()},
        }

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> "Database":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_space(space: str) -> None:
    if space not in SPACES:
        raise QueryError(f"unknown space '{space}'; use one of {', '.join(SPACES)}")


def _arrow(result) -> pa.Table:
    """A relation as an Arrow table (``to_arrow_table`` in DuckDB >= 1.4, ``arrow`` before)."""
    fetch = getattr(result, "to_arrow_table", None) or result.arrow
    return fetch()


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def open(path: str | os.PathLike) -> Database:  # noqa: A001 - mirrors sqlite3.connect / lancedb.connect
    """Open a database for reading."""
    return Database(path)
