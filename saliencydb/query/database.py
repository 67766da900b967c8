"""The Database object: one pinned version of a database, its tables as DuckDB views.

User SQL runs in a DuckDB connection that can reach only the tables of that version: their
files are registered as lazily scanned Arrow datasets first, then external access is
switched off and the configuration locked, so no statement of any kind can read or write
the file system or the network (README "Reliability").
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from ..errors import DamagedError, DatabaseError, QueryError, SpecError
from ..saliency import UnitLayout, l2_normalize
from ..saliency.normalise import Normaliser, check_normalisation, needs_dlogit, running_stats
from ..schemas import PROFILE_EXP, TABLE_SCHEMAS, UNITS_SCHEMA, Manifest, samples_schema, scan_schema
from ..storage import Snapshot, fixed_list_to_numpy, profile_columns, profiles_to_numpy
from ..storage.indexes import SPACES, build_index

# the per-sample prescale of each normalisation in SQL (saliency.normalise.prescale; a zero scale is 1)
_SCALE_SQL = {
    "zscore": "1.0::DOUBLE",
    "zscore-unitnorm": "coalesce(nullif(sqrt(list_inner_product(raw_profile::DOUBLE[], raw_profile::DOUBLE[])), 0), 1.0)",
    "zscore-dlogit": "CASE WHEN dlogit_norm > 0 THEN dlogit_norm::DOUBLE WHEN dlogit_norm = 0 THEN 1.0 END",
}
# a float16 database's stored raw_profile * 2**profile_exp (scanned as float32) -> the true float32 values, exactly,
# as the FLOAT[n_units] array a float32 database's view has
_DECODE_SQL = (f"* EXCLUDE ({PROFILE_EXP}) REPLACE (list_transform(raw_profile, lambda x: "
               f"(x * pow(2.0, -{PROFILE_EXP}))::FLOAT)::FLOAT[{{n}}] AS raw_profile)")
SALIENT_TOP_K = 10  # units per sample in the salient_units view (the top-k of the standardised profile)
READ_ONLY_STATEMENTS = {"StatementType.SELECT", "StatementType.EXPLAIN"}
_PIVOT = re.compile(r"^\s*(pivot|unpivot|from|with|select)\b", re.I)  # PIVOT parses as a MULTI statement
_ANALYZE = re.compile(r"\banaly[sz]e\b", re.I)
_SEAL = ("SET python_enable_replacements = false", "SET autoinstall_known_extensions = false",
         "SET autoload_known_extensions = false", "SET enable_external_access = false", "SET lock_configuration = true")


class Database:
    """A read-only view of one version of a database: the current one when it was opened, or
    ``as_of`` a kept commit. The version is pinned until ``close()``.

    >>> db = saliencydb.open("./db")
    >>> db.sql("SELECT split, avg(correct::int) FROM samples GROUP BY split")

    ``normalisation`` (saliency.normalise) other than the database's own: the statistics of that
    normalisation are computed over the database's reference splits when it is opened, and every
    standardised profile (neighbours, groups, the ``zscores`` view, top units) uses them, with an
    exact flat index in place of the stored saliency index. Nothing is written under it.
    """

    def __init__(self, path: str | os.PathLike, *, as_of: int | None = None, normalisation: str | None = None):
        self.path = Path(path)
        self.snapshot = Snapshot(self.path, as_of)
        self.manifest: Manifest = self.snapshot.manifest
        self._indexes: dict = {}
        self._mapped: dict = {}  # space -> the stored index, its vectors memory-mapped (query_index)
        self.stale_indexes: dict[str, tuple[int, int]] = {}  # space -> (vectors in the index, committed rows)
        self._stats: tuple[np.ndarray, np.ndarray] | None = None
        try:
            self.normalisation = check_normalisation(normalisation or self.manifest.profile_normalisation)
        except SpecError as e:
            self.snapshot.close()
            raise QueryError(str(e)) from None
        try:
            self.con = duckdb.connect(":memory:")
            self._create_views()
            for statement in _SEAL:
                self.con.execute(statement)
        except BaseException:
            self.snapshot.close()
            raise

    @property
    def commit(self) -> int:
        return self.manifest.commit

    # -- views --------------------------------------------------------------------------
    def _view(self, name: str, rels: list[str], schema: pa.Schema, select: str = "*") -> None:
        data = self.snapshot.dataset(rels, schema) if rels else schema.empty_table()
        self.con.register(f"_{name}_data", data)
        self.con.execute(f"CREATE OR REPLACE VIEW {name} AS SELECT {select} FROM _{name}_data")

    def _create_views(self) -> None:
        m = self.manifest
        half = m.stored_profile_dtype == "float16"  # the view shows the true values, without profile_exp
        self._view("samples", m.part_files(), scan_schema(samples_schema(m.n_units, m.feature_dim, m.stored_profile_dtype)),
                   f"{_DECODE_SQL.format(n=m.n_units) if half else '*'}, label_name || ' -> ' || pred_name AS confusion")
        if self.overridden and m.stats is not None:
            mean, std = self.stats
            units = pa.table({**UnitLayout.from_dict(m.units).columns(), "mean": mean, "std": std}, schema=UNITS_SCHEMA)
            self.con.register("_units_data", units)
            self.con.execute("CREATE OR REPLACE VIEW units AS SELECT * FROM _units_data")
        else:
            self._view("units", [m.stats.file] if m.stats else [], UNITS_SCHEMA)
        for name, schema in TABLE_SCHEMAS.items():
            self._view(name, m.tables.get(name, []), schema)
        names = m.class_names
        self.con.register("_classes", pa.table({"class": pa.array(range(len(names)), pa.int32()), "name": names}))
        self.con.execute("CREATE OR REPLACE VIEW classes AS SELECT * FROM _classes")
        # every sample's standardised profile, one row per (sample, unit); evaluated lazily
        self.con.execute(
            f"""CREATE OR REPLACE VIEW zscores AS
               SELECT s.sample_id, u.unit_id, u.layer, u.layer_index, u.channel,
                      (s.raw_profile[u.unit_id + 1] / s._scale - u.mean) / u.std AS z
               FROM (SELECT sample_id, raw_profile, {_SCALE_SQL[self.normalisation]} AS _scale FROM samples) s
               CROSS JOIN units u"""
        )
        self.con.execute(
            f"""CREATE OR REPLACE VIEW salient_units AS
                SELECT sample_id, row_number() OVER (PARTITION BY sample_id ORDER BY z DESC, unit_id) AS rank,
                       unit_id, layer, layer_index, channel, z
                FROM zscores QUALIFY rank <= {SALIENT_TOP_K}"""
        )
        # the standardised profile of one sample, one row per unit; and its top-k units
        self.con.execute(
            f"""CREATE OR REPLACE MACRO profile(id) AS TABLE
               SELECT u.unit_id, u.layer, u.layer_index, u.channel, s.raw_profile[u.unit_id + 1] AS raw,
                      (s.raw_profile[u.unit_id + 1] / s._scale - u.mean) / u.std AS z
               FROM (SELECT sample_id, raw_profile, {_SCALE_SQL[self.normalisation]} AS _scale FROM samples) s, units u
               WHERE s.sample_id = id ORDER BY u.unit_id"""
        )
        self.con.execute(
            """CREATE OR REPLACE MACRO top_units(id, k) AS TABLE
               SELECT row_number() OVER (ORDER BY z DESC) AS rank, * FROM profile(id) ORDER BY z DESC LIMIT k"""
        )

    # -- SQL ----------------------------------------------------------------------------
    def sql(self, query: str, params: list | None = None, *, max_rows: int | None = None,
            timeout_s: float | None = None) -> pa.Table:
        """Run one read-only statement (SELECT / WITH / PIVOT / DESCRIBE / plain EXPLAIN ...) and return an Arrow table.

        ``max_rows``: at most that many rows plus one (so a caller can tell the result was cut); ``timeout_s``: the
        statement is interrupted after that many seconds (QueryError)."""
        check_read_only(self.con, query)
        timer = threading.Timer(timeout_s, self.con.interrupt) if timeout_s else None
        try:
            if timer is not None:
                timer.start()
            rel = self.con.sql(query, params=params or None)
            return _arrow(rel if max_rows is None else rel.limit(max_rows + 1))
        except duckdb.InterruptException:
            raise QueryError(f"SQL error: the query ran longer than {timeout_s:g} s and was stopped; narrow it") from None
        except duckdb.Error as e:
            raise self._query_error("SQL error", e) from None
        except (ValueError, TypeError, OverflowError) as e:  # a result DuckDB cannot hand to Arrow
            raise QueryError(f"SQL error: {_first_line(e)}") from None
        finally:
            if timer is not None:
                timer.cancel()

    def _query_error(self, what: str, e: Exception) -> Exception:
        text = _first_line(e)
        refused = "Permission Error" in text or "disabled by configuration" in text
        if not refused and str(self.path) in text and ("Parquet" in text or "parquet" in text or "magic" in text):
            return DamagedError(f"a committed file of database '{self.path}' is damaged ({text}); "
                                f"run `saliencydb verify --db {self.path}` for the damage and the fix")
        return QueryError(f"{what}: {text}")

    def notices(self, query: str | None = None) -> list[str]:
        """Warnings a reader should see: derived tables (named in ``query``, or all) computed
        from other samples or statistics than this version's."""
        out = []
        for name, base in sorted(self.manifest.stale_derived().items()):
            if query is None or re.search(rf"\b{name}\b", query, re.I):
                rerun = {"knn": "mistakes", "clusters": "clusters", "blame": "clusters", "triage": "triage"}[name]
                out.append(f"note: the {name} table was computed at commit {base}; samples or statistics have changed "
                           f"since (this is commit {self.commit}). Rerun `saliencydb {rerun} --db {self.path}` to refresh it")
        return out

    # -- vectors ------------------------------------------------------------------------
    @property
    def overridden(self) -> bool:
        """Whether this view's normalisation is not the database's own (its statistics computed on opening)."""
        return self.normalisation != self.manifest.profile_normalisation

    @property
    def stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Frozen (mean, std) per unit of this view's normalisation."""
        if self._stats is None:
            self._stats = self._override_stats() if self.overridden else self.snapshot.read_stats()
        return self._stats

    def _override_stats(self) -> tuple[np.ndarray, np.ndarray]:
        m = self.manifest
        if m.stats is None:
            raise DatabaseError(f"database '{self.path}' has no standardisation statistics yet; finish indexing its first split")
        files = [p.file for p in m.parts if p.split in set(m.stats.splits)]
        if not files:
            raise QueryError(f"database '{self.path}' has statistics from {m.stats.source or 'no split'}: another "
                             f"normalisation needs statistics over its samples; run `saliencydb restat --db {self.path} "
                             f"--normalisation {self.normalisation}`")
        chunks = ((raw, dlogit) for _, raw, dlogit in self.snapshot.iter_raw_profiles(files=files))
        try:
            stats = running_stats(chunks, self.normalisation, m.n_units)
        except SpecError as e:
            raise QueryError(f"database '{self.path}' cannot use {self.normalisation}: {e}") from None
        return stats.mean, stats.std

    @property
    def normaliser(self) -> Normaliser:
        """Raw profiles -> standardised profiles, with this view's normalisation and statistics."""
        return Normaliser(self.normalisation, *self.stats)

    def z(self, ids: np.ndarray | list[int]) -> np.ndarray:
        """Standardised profiles (float32) of the given sample ids, in that order."""
        return self.standardise(self.rows("raw_profile", ids), ids)

    def standardise(self, raw: np.ndarray, ids: np.ndarray | list[int] | None = None,
                    dlogit: np.ndarray | None = None) -> np.ndarray:
        """Raw profiles of the samples ``ids`` (or with their ``dlogit`` norms) standardised."""
        if dlogit is None and ids is not None and needs_dlogit(self.normalisation):
            dlogit = self.dlogit_norms(ids)
        try:
            return self.normaliser(raw, dlogit)
        except SpecError as e:
            raise QueryError(f"database '{self.path}' cannot use {self.normalisation}: {e}") from None

    def dlogit_norms(self, ids: np.ndarray | list[int]) -> np.ndarray:
        """The stored ||dL/dlogits|| of the given sample ids, in that order (NaN where not stored)."""
        ids = np.asarray(ids, dtype=np.int64)
        t = self._execute("SELECT sample_id, dlogit_norm FROM samples WHERE list_contains(?, sample_id)",
                          [sorted(set(ids.tolist()))]).fetchall()
        found = {int(i): np.nan if v is None else float(v) for i, v in t}
        return np.array([found.get(int(i), np.nan) for i in ids], dtype=np.float64)

    @property
    def spaces(self) -> tuple[str, ...]:
        """The vector spaces of this database: saliency, and feature when its samples carry a feature vector."""
        return SPACES if self.manifest.has_features else ("saliency",)

    def require_space(self, space: str) -> None:
        """Refuse, in one line, a space this database does not have (feature, when its model has no feature vector)."""
        check_space(space)
        if space not in self.spaces:
            raise QueryError(f"database '{self.path}' has no feature vectors ({self.manifest.no_features_reason}); "
                             "use --space saliency")

    def index(self, space: str):
        """The FAISS index of ``space`` (loaded once, on the CPU: single queries are cheap there, and
        filtered searches need ID selectors, which GPU indexes do not take; the batched
        neighbour graph uses the GPUs).

        An index that does not cover this version's samples (an ingest in progress, or one
        interrupted during the index update) is not used: an exact flat index over the
        version's committed profiles takes its place, and ``stale_indexes`` says so."""
        self.require_space(space)
        if space not in self._indexes:
            entry = self.manifest.indexes.get(space)
            if entry is None:
                raise QueryError(f"database '{self.path}' has no {space} index; finish `saliencydb index` first")
            rows = self.manifest.rows()
            if space == "saliency" and self.overridden:
                self._indexes[space] = self._exact_index(space)
            elif entry.ntotal != rows:
                self.stale_indexes[space] = (entry.ntotal, rows)
                self._indexes[space] = self._exact_index(space)
            else:
                self._indexes[space] = self.snapshot.read_index(space)
        return self._indexes[space]

    def query_index(self, space: str):
        """(index, mapped) for one query of ``space``: the index already loaded by ``index()`` if any;
        else the stored index when it is current, read with its vectors memory-mapped (``mapped`` True:
        a flat one is then searched by ``storage.indexes.scan_flat``, block by block, in bounded memory);
        else ``index()`` (a stale or overridden index: the exact flat index built in memory)."""
        self.require_space(space)
        if space in self._indexes:
            return self._indexes[space], False
        entry = self.manifest.indexes.get(space)
        if entry is None or entry.ntotal != self.manifest.rows() or (space == "saliency" and self.overridden):
            return self.index(space), False
        if space not in self._mapped:
            self._mapped[space] = self.snapshot.read_index(space, mapped=True)
        return self._mapped[space], True

    def _exact_index(self, space: str):
        def chunks():
            if space == "saliency":
                for ids, raw, dlogit in self.snapshot.iter_raw_profiles():
                    yield ids, l2_normalize(self.standardise(raw, dlogit=dlogit))
                return
            for ids, rows in self.snapshot.iter_profiles("feature"):
                yield ids, l2_normalize(rows)

        return build_index(self.manifest.n_units if space == "saliency" else self.manifest.feature_dim, chunks, "flat")

    def vectors(self, space: str, ids: np.ndarray | list[int]) -> np.ndarray:
        """Search vectors of the given sample ids, in that order: standardised + L2-normalised
        profiles (saliency) or L2-normalised features (feature)."""
        self.require_space(space)
        if space == "saliency":
            return l2_normalize(self.z(ids))
        return l2_normalize(self.rows("feature", ids))

    def rows(self, column: str, ids: np.ndarray | list[int]) -> np.ndarray:
        """Stored ``raw_profile`` or ``feature`` rows of the given sample ids, in that order, float32 (a float16
        database's raw profiles decoded to their true values).

        Only the parts whose id range holds a wanted id are read, with a row filter, so a few
        ids cost a few small row groups, not a scan of the whole table."""
        if column == "feature":
            self.require_space("feature")
        ids = np.asarray(ids, dtype=np.int64)
        width = self.manifest.n_units if column == "raw_profile" else self.manifest.feature_dim
        out = np.empty((len(ids), width), dtype=np.float32)
        found = np.zeros(len(ids), dtype=bool)
        for part in self.manifest.parts:
            hit = ids[(ids >= part.min_id) & (ids <= part.max_id)]
            if len(hit) == 0:
                continue
            columns = profile_columns(self.manifest) if column == "raw_profile" else [column]
            t = self.snapshot.read_table(part.file, columns=["sample_id", *columns],
                                         filters=[("sample_id", "in", sorted(set(hit.tolist())))])
            got = t.column("sample_id").to_numpy()
            vecs = profiles_to_numpy(t, width) if column == "raw_profile" else fixed_list_to_numpy(t.column(column), width)
            pos = {int(i): r for r, i in enumerate(got)}
            for j in np.flatnonzero((ids >= part.min_id) & (ids <= part.max_id)):
                r = pos.get(int(ids[j]))
                if r is not None:
                    out[j], found[j] = vecs[r], True
        if not found.all():
            missing = int(ids[~found][0])
            raise QueryError(f"no sample with id {missing} in '{self.path}' ({self.manifest.rows()} samples)")
        return out

    def search_vectors(self, space: str, rows: np.ndarray, dlogit: np.ndarray | None = None) -> np.ndarray:
        """Raw profiles (with their ``dlogit`` norms, for zscore-dlogit) or features turned into the
        vectors the index of ``space`` holds."""
        if space == "saliency":
            rows = self.standardise(rows, dlogit=dlogit)
        return l2_normalize(rows)

    @property
    def modality(self) -> str:
        """What the samples are: "image", or "text" (sentences, their ``text`` column filled; ``data.text``)."""
        return "text" if self.manifest.model.transform.get("kind") == "tokens" else "image"

    def sample(self, sample_id: int) -> dict:
        """The metadata of one sample (no vectors); a text sample's sentence as ``text``."""
        cols = ["sample_id", "split", "key", "label", "label_name", "pred", "pred_name", "correct", "loss", "true_conf", "pred_conf"]
        cols += ["text"] if self.modality == "text" else []
        rows = self._execute(f"SELECT {', '.join(cols)} FROM samples WHERE sample_id = ?", [int(sample_id)]).fetchall()
        if not rows:
            self.require_samples()
            lo, hi = self._execute("SELECT min(sample_id), max(sample_id) FROM samples").fetchone()
            raise QueryError(f"no sample with id {sample_id} in '{self.path}' (ids run {lo}..{hi}); find ids with `saliencydb sql`")
        return dict(zip(cols, rows[0]))

    def require_samples(self) -> None:
        """Refuse, in one line, to answer about the samples of a version that holds none."""
        if self.manifest.rows() == 0:
            raise QueryError(f"database '{self.path}' holds no samples yet (commit {self.commit}: no indexing job has "
                             "committed any); run `saliencydb index` (its error, if it failed, says why)")

    def _execute(self, query: str, params: list | None = None):
        """Run the library's own SQL; a damaged file becomes one line."""
        try:
            return self.con.execute(query, params or [])
        except duckdb.Error as e:
            raise self._query_error("SQL error", e) from None

    def ids_where(self, where: str | None = None, split: str | None = None) -> np.ndarray:
        """Sample ids matching an SQL predicate over the samples view and/or a split.

        The predicate must parse as one SQL expression on its own, so it cannot close the
        WHERE clause and append another query."""
        if split is not None and split not in self.manifest.splits:
            raise QueryError(f"unknown split '{split}'; the database has {', '.join(sorted(self.manifest.splits)) or 'no splits'}")
        clauses, params = [], []
        if where is not None:
            if not where.strip():
                raise QueryError("--where is empty; give an SQL predicate over samples such as \"NOT correct\"")
            try:
                duckdb.SQLExpression(where)
            except (duckdb.Error, ValueError, TypeError) as e:
                raise QueryError(f"--where {where!r} is not one SQL predicate over samples: {_first_line(e)}") from None
            clauses.append(f"({where})")
        if split is not None:
            clauses.append("split = ?")
            params.append(split)
        q = "SELECT sample_id FROM samples" + (" WHERE " + " AND ".join(clauses) if clauses else "")
        try:
            return self.con.execute(q, params).fetchnumpy()["sample_id"].astype(np.int64)
        except duckdb.Error as e:
            raise self._query_error(f"--where {where!r}", e) from None
        except (ValueError, TypeError, OverflowError) as e:
            raise QueryError(f"--where {where!r}: {_first_line(e)}") from None

    # -- queries --------------------------------------------------------------------------
    def neighbors(self, sample_id: int | None = None, *, k: int = 10, space: str = "saliency",
                  where: str | None = None, split: str | None = None, image: str | None = None,
                  label: str | int | None = None, text: str | None = None):
        """Nearest neighbours of a stored sample, or of a new image (or, in a text database, a new sentence)
        with its label (not stored)."""
        from .neighbors import neighbors

        return neighbors(self, sample_id, k=k, space=space, where=where, split=split, image=image, label=label, text=text)

    def mistakes(self, k: int = 10, *, n_boot: int = 1000, seed: int = 0, write: bool = True, progress=None,
                 wait: bool = False, store=None):
        """The shared-mistake report (appendix A.2) per split, saliency vs feature space; with
        ``write``, the neighbour graph is stored as the knn table (refused, with nothing stored,
        when the database moved on from this version meanwhile)."""
        from .knn import mistakes

        return mistakes(self, k=k, n_boot=n_boot, seed=seed, write=write, progress=progress, wait=wait, store=store)

    def clusters(self, n_clusters: int = 8, *, errors_only: bool = True, split: str | None = None,
                 seed: int = 0, write: bool = True, wait: bool = False, store=None):
        """k-means error groups over standardised profiles."""
        from .clusters import clusters

        return clusters(self, n_clusters=n_clusters, errors_only=errors_only, split=split, seed=seed, write=write,
                        wait=wait, store=store)

    def triage(self, split: str, *, write: bool = True, wait: bool = False, store=None):
        """New mistakes of ``split`` assigned to known error groups or marked new; layer drift."""
        from .triage import triage

        return triage(self, split, write=write, wait=wait, store=store)

    def reopen(self) -> "Database":
        """A fresh view at the latest commit."""
        self.close()
        return Database(self.path)

    # -- summary ------------------------------------------------------------------------
    def split_summary(self) -> dict[str, dict]:
        """Per split: its samples, accuracy (6 decimals) and mistakes."""
        rows = self._execute(
            "SELECT split, count(*), avg(correct::INT), sum((NOT correct)::INT) FROM samples GROUP BY split ORDER BY split"
        ).fetchall()
        return {s: {"samples": n, "accuracy": round(acc, 6), "mistakes": int(mis)} for s, n, acc, mis in rows}

    def info(self):
        """``saliencydb info``: this version summarised (a ``DatabaseInfo``)."""
        from .summary import database_info

        return database_info(self)

    def close(self) -> None:
        try:
            self.con.close()
        finally:
            self.snapshot.close()

    def _repr_html_(self) -> str:
        """Jupyter's rich display: path, commit, model, units and splits."""
        from .html import database_html

        return database_html(self)

    def __enter__(self) -> "Database":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_read_only(con, query: str) -> None:
    """Refuse anything but one read-only statement (the second line of defence: the connection
    itself cannot touch files)."""
    try:
        statements = con.extract_statements(query)
    except duckdb.Error as e:
        raise QueryError(f"SQL does not parse: {_first_line(e)}") from None
    if len(statements) != 1:
        raise QueryError(f"give exactly one SQL statement (got {len(statements)})")
    try:
        kind = str(statements[0].type)
    except ValueError:  # a statement type this DuckDB's Python API cannot name (e.g. UPDATE EXTENSIONS)
        kind = "StatementType.UNKNOWN"
    pivot = kind == "StatementType.MULTI" and _PIVOT.match(_strip_comments(query))
    if kind not in READ_ONLY_STATEMENTS and not pivot:
        raise QueryError(
            f"only read-only queries are allowed (this is a {kind.split('.')[-1]} statement); "
            "the database is changed only by saliencydb commands"
        )
    if kind == "StatementType.EXPLAIN" and _ANALYZE.search(_strip_comments(query)):
        raise QueryError("EXPLAIN ANALYZE runs the statement it explains; use plain EXPLAIN")


def _strip_comments(query: str) -> str:
    return re.sub(r"--[^\n]*|/\*.*?\*/", " ", query, flags=re.S)


def check_space(space: str) -> None:
    if space not in SPACES:
        raise QueryError(f"unknown space '{space}'; use one of {', '.join(SPACES)}")


def _arrow(result) -> pa.Table:
    """A relation as an Arrow table (``to_arrow_table`` in DuckDB >= 1.4, ``arrow`` before)."""
    fetch = getattr(result, "to_arrow_table", None) or result.arrow
    return fetch()


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def open(path: str | os.PathLike, *, as_of: int | None = None, normalisation: str | None = None) -> Database:  # noqa: A001 - mirrors sqlite3.connect / lancedb.connect
    """Open a database for reading: its current version, or ``as_of`` a kept commit; ``normalisation``:
    see every profile through another normalisation than the database's (``Database``)."""
    return Database(path, as_of=as_of, normalisation=normalisation)
