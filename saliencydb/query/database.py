"""The Database object: DuckDB views over the committed Parquet tables of one database."""

from __future__ import annotations

import os
from pathlib import Path

import duckdb
import pyarrow as pa

from ..errors import QueryError
from ..schemas import (CLUSTERS_SCHEMA, FAILURES_SCHEMA, INGESTS_SCHEMA, KNN_SCHEMA, UNITS_SCHEMA, Manifest,
                       read_manifest, samples_schema)

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
                             ("knn", KNN_SCHEMA), ("clusters", CLUSTERS_SCHEMA)):
            self._view(name, m.tables.get(name, []), schema)

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
            "units": {"kind": m.units["kind"], "count": m.n_units, "layers": len(m.units["layers"])},
            "feature_dim": m.feature_dim,
            "metric": m.metric,
            "samples": m.rows(),
            "splits": splits,
            "statistics": None if m.stats is None else {"splits": m.stats["splits"], "count": m.stats["count"], "frozen": m.stats["frozen"]},
            "indexes": {k: {"kind": v["kind"], "ntotal": v["ntotal"], "stale": v["ntotal"] != m.rows()} for k, v in m.indexes.items()},
        }

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> "Database":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _arrow(result) -> pa.Table:
    """A relation as an Arrow table (``to_arrow_table`` in DuckDB >= 1.4, ``arrow`` before)."""
    fetch = getattr(result, "to_arrow_table", None) or result.arrow
    return fetch()


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def open(path: str | os.PathLike) -> Database:  # noqa: A001 - mirrors sqlite3.connect / lancedb.connect
    """Open a database for reading."""
    return Database(path)
